"""The one shape of BPE model JSON a tokenizer file may hold: exactly what our own writer
(``tokenizers.Tokenizer.to_str`` of a plain BPE with no normalizer, pre-tokenizer, decoder
or added tokens) produces. Anything else is refused *before* the Rust ``tokenizers`` library
sees it: some of its options (a regex normalizer, for one) can make it panic, and a panic
is a traceback, not one line."""

from __future__ import annotations

from ..errors import TokenizerFileError

MAX_VOCAB = 1 << 20
_TOP_NONE = ("truncation", "padding", "normalizer", "pre_tokenizer", "post_processor", "decoder")
_MODEL_FIXED = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                "ignore_merges": False}


def check_bpe_json(data, name: str) -> None:
    """Raise TokenizerFileError unless ``data`` is a plain BPE model as we write it."""
    if not isinstance(data, dict):
        raise TokenizerFileError(f"'{name}' is not a JSON object")
    allowed = {"version", "added_tokens", "model", *_TOP_NONE}
    extra = set(data) - allowed
    if extra:
        raise TokenizerFileError(f"'{name}' has fields this release does not accept: {sorted(extra)}")
    if data.get("version") != "1.0":
        raise TokenizerFileError(f"'{name}' has version {data.get('version')!r}, expected '1.0'")
    for key in _TOP_NONE:
        if data.get(key) is not None:
            raise TokenizerFileError(f"'{name}' sets '{key}'; only a plain BPE model is accepted")
    if data.get("added_tokens", []) != []:
        raise TokenizerFileError(f"'{name}' has added tokens; only a plain BPE model is accepted")
    model = data.get("model")
    if not isinstance(model, dict):
        raise TokenizerFileError(f"'{name}.model' is not a JSON object")
    extra = set(model) - {*_MODEL_FIXED, "vocab", "merges"}
    if extra:
        raise TokenizerFileError(f"'{name}.model' has fields this release does not accept: {sorted(extra)}")
    for key, want in _MODEL_FIXED.items():
        if key in model and model[key] != want:
            raise TokenizerFileError(f"'{name}.model.{key}' is {model[key]!r}; expected {want!r}")
    if model.get("type") != "BPE":
        raise TokenizerFileError(f"'{name}.model' is not a BPE model")
    vocab, merges = model.get("vocab"), model.get("merges")
    if not isinstance(vocab, dict) or not 0 < len(vocab) <= MAX_VOCAB:
        raise TokenizerFileError(f"'{name}.model.vocab' is not a vocabulary of 1 to {MAX_VOCAB} entries")
    ids = vocab.values()
    if any(type(i) is not int for i in ids) or sorted(ids) != list(range(len(vocab))):
        raise TokenizerFileError(f"'{name}.model.vocab' ids are not exactly 0 .. {len(vocab) - 1}")
    if any(not s for s in vocab):
        raise TokenizerFileError(f"'{name}.model.vocab' has an empty token")
    if not isinstance(merges, list) or len(merges) >= len(vocab):
        raise TokenizerFileError(f"'{name}.model.merges' is not a list shorter than the vocabulary")
    for m in merges:
        if (not isinstance(m, list) or len(m) != 2 or not all(isinstance(s, str) for s in m)
                or m[0] not in vocab or m[1] not in vocab or m[0] + m[1] not in vocab):
            raise TokenizerFileError(f"'{name}.model.merges' has an entry {str(m)[:40]} that is not "
                                     "a pair of vocabulary tokens merging into one")
