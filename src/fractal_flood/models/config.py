"""Typed model configurations and named presets. Each is saved into every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class RendererConfig:
    """The shared-weight bidirectional renderer (``FractalDiffusionModel``).

    ``levels`` comes from the tokenizer: the hierarchy as ``levels.Level`` dicts, top to
    bottom, so a deeper hierarchy needs no code change.
    """

    levels: list = field(default_factory=list)
    n_layers: int = 6
    d_model: int = 256
    n_heads: int = 8
    timesteps: int = 100  # T of the discrete noise process
    # a length for each top-level item (root) from its embedding, so the top level's canvases
    # are packed like the others; absent from older checkpoints, which pad the top level
    top_lengths: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RendererConfig":
        return cls(**_known(cls, d))


@dataclass
class CausalLMConfig:
    """A GPT-2 shaped causal transformer: the manager (over roots) or the AR peer (over chunks)."""

    vocab_size: int = 2048
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    context: int = 256  # attention window in tokens
    dropout: float = 0.0  # training only; absent from older checkpoints, which load as 0
    # output layer: 0 = one softmax over the vocabulary; K = P(class) x P(token | class) over
    # K classes of consecutive ids (class_head.py); "auto" picks K from the vocabulary
    # (auto_classes). Absent from older checkpoints: 0.
    head_classes: int = 0

    def __post_init__(self):
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.head_classes == "auto":
            self.head_classes = auto_classes(self.vocab_size)
        check_classes(self.vocab_size, self.head_classes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CausalLMConfig":
        return cls(**_known(cls, d))


def auto_classes(vocab_size: int, least_vocab: int = 4096) -> int:
    """The class count ``head_classes="auto"`` picks (class_head.py): the divisor of
    ``vocab_size`` nearest its square root, so both factors are small; 0 (one softmax)
    below ``least_vocab`` or when only 1 and ``vocab_size`` divide it."""
    if vocab_size < least_vocab:
        return 0
    root = vocab_size ** 0.5
    divisors = [k for k in range(2, vocab_size) if vocab_size % k == 0]
    return min(divisors, key=lambda k: (abs(k - root), k)) if divisors else 0


def check_classes(vocab_size: int, classes) -> None:
    """``head_classes`` is 0 or a proper divisor of the vocabulary size (ValueError)."""
    if type(classes) is not int or classes < 0 or classes == 1 or classes >= max(vocab_size, 2) \
            or (classes and vocab_size % classes):
        raise ValueError(f"head_classes is {classes!r}; expected 0 (one softmax) or a divisor of "
                         f"the vocabulary size {vocab_size} in 2 .. {vocab_size - 1}")


# which language-model parameters AdamW decays (CausalLM.optimizer_groups); here, without
# torch, so that the command line's help stays light
DECAY_MODES = ("all", "matrices", "matrices+embeddings")

# the tokenizer learns its merges from the first this-many characters of the corpus (all of
# the shipped one): enough text for 1,024 + 2,048 merges, and a bound on its memory
TOKENIZER_SAMPLE_CHARS = 8_000_000


@dataclass
class Preset:
    """Sizes and training schedule for one named preset."""

    name: str
    renderer: dict
    manager: dict
    peer: dict
    num_chunks: int = 1024
    num_roots: int = 2048
    renderer_steps: int = 2400
    renderer_batch: int = 1024  # per step, half per level
    manager_steps: int = 3000
    peer_steps: int = 3000
    lm_batch: int = 64
    lr: float = 1e-3
    renderer_lr: float | None = None  # None: ``lr``
    energy_weight: float = 1.0
    # AdamW weight decay of each language model and which parameters it acts on
    # (``CausalLM.optimizer_groups``: "all", "matrices", "matrices+embeddings")
    manager_optim: dict = field(default_factory=lambda: dict(weight_decay=0.01, decay="all"))
    peer_optim: dict = field(default_factory=lambda: dict(weight_decay=0.01, decay="all"))


PRESETS: dict[str, Preset] = {
    # Seconds on a CPU: for tests and smoke runs.
    "tiny": Preset(
        name="tiny",
        renderer=dict(n_layers=1, d_model=64, n_heads=4),
        manager=dict(n_layers=2, d_model=64, n_heads=4, context=64),
        peer=dict(n_layers=2, d_model=64, n_heads=4, context=64),
        num_chunks=128, num_roots=192,
        renderer_steps=300, renderer_batch=128,
        manager_steps=200, peer_steps=200, lm_batch=16, lr=3e-3,
    ),
    # The default: a renderer of one layer of 64, the smallest that renders the shipped
    # corpus exactly in a few CPU-minutes (docs/log/notebook.md, renderer size sweep). Manager as the
    # seed's (``--lm-shape 2x128x4`` is as good on the shipped corpus with a cheaper step:
    # docs/log/notebook.md, "A shallower manager"); the AR peer is the manager's size.
    "small": Preset(
        name="small",
        renderer=dict(n_layers=1, d_model=64, n_heads=4),
        manager=dict(n_layers=4, d_model=128, n_heads=4, context=256, head_classes="auto"),
        peer=dict(n_layers=4, d_model=128, n_heads=4, context=256),
        renderer_steps=3000, renderer_batch=512, renderer_lr=2e-3,
    ),
    # The seed's sizes (docs/DESIGN.md): renderer 6x256x8, manager 4x128; AR peer = renderer size.
    "seed": Preset(
        name="seed",
        renderer=dict(n_layers=6, d_model=256, n_heads=8),
        manager=dict(n_layers=4, d_model=128, n_heads=4, context=256, head_classes="auto"),
        peer=dict(n_layers=6, d_model=256, n_heads=8, context=256),
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r} (choose from: {', '.join(PRESETS)})") from None


def _known(cls, d: dict) -> dict:
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return dict(d)
