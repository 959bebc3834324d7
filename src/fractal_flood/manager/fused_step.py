"""One decode step of a ``CausalLM`` as a few Triton kernels: the opt-in fast step on a GPU.

``ARStream(fused=True)`` (``fractal-flood generate --fused-step``) replaces the eager step
(``hidden_cached`` + ``draw``: 154 operators at batch 1 for the 4 x 128 manager shipped then,
each at least one kernel on a GPU; ``scripts/profile_step.py --tensor-draw``) by
``FusedStep.step``: 5 kernels a layer and 1-2 for the output layer and the draw
(``fused_kernels.py``), 21 for the shipped manager, captured in the stream's CUDA graph
like the eager step. The eager step stays the reference: the fused one writes the same KV
cache entries and draws the same tokens up to float32 rounding (hidden states within
1e-5, tested on the CPU under ``TRITON_INTERPRET=1``, where Triton runs its kernels in
NumPy; ``tests/test_fused_step.py``; ``scripts/compile_kernels.py`` compiles them for
sm_90 without a GPU). Top-k / top-p draws sort the vocabulary: a row
asking for them gets the fused layers and the eager draw.

Differences from the eager step, by design: activations stay float32 between kernels (the
eager step rounds each op's output to the model's dtype, bfloat16 on a GPU), so in bf16
the two agree less closely than in fp32; ``scripts/profile_step.py --modes fused`` and the
CUDA test in ``tests/test_fused_step.py`` measure both on a GPU.

Needs ``triton`` (it comes with PyTorch's CUDA wheels; ``pip install triton`` elsewhere).
"""

from __future__ import annotations

import os

import torch

from ..errors import DeviceError
from ..models.layers import layer_norm
from ..sampling.tokens import RowSampling


def interpreted() -> bool:
    """Whether the fused kernels run in Triton's NumPy interpreter (then CPU tensors are
    allowed): ``TRITON_INTERPRET=1`` set before Triton was first imported in this process."""
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        return False  # without importing Triton
    _kernels()  # Triton's own jit'd library (tl.sum, tl.cumsum) is made when Triton is imported
    import triton.language.standard as std
    return type(std.cumsum).__name__ == "InterpretedFunction"


def check_fused_device(device: torch.device) -> None:
    """DeviceError unless the fused step can run on ``device`` (CUDA, or the interpreter)."""
    if torch.device(device).type != "cuda" and not interpreted():
        raise DeviceError(f"the fused decode step runs on a CUDA device, got {device} (on the CPU only "
                          "under TRITON_INTERPRET=1 set before Triton is imported, for tests)")


def _kernels():
    try:
        from . import fused_kernels
    except ImportError as e:  # no triton installed
        raise DeviceError(f"the fused decode step needs Triton ({e}); `pip install triton`, "
                          "or leave the fused step off") from None
    return fused_kernels


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


class FusedStep:
    """Buffers and launches for one T = 1 decode step of ``model`` over its installed KV
    caches (``model.setup_cache(batch)`` first; eval mode). ``step`` is CUDA-graph safe:
    it allocates nothing and never reads a value back to the host."""

    BLOCK_N = 32  # output rows per program of a matrix-vector kernel
    LOGITS_BLOCK_N = 64  # output rows per program of a one-softmax head's logits
    MAX_BLOCK_V = 1024  # a one-softmax draw reads its row this many logits at a time at most

    @classmethod
    def block_v_for(cls, vocab: int) -> int:
        """The one-softmax draw's block for a vocabulary of ``vocab`` entries."""
        return min(cls.MAX_BLOCK_V, _pow2(vocab))

    @staticmethod
    def warps(tile: int) -> int:
        """Warps for a program whose largest tile has ``tile`` elements: 4 (Triton's
        default) up to 4,096, 8 above, so a 256 x 32 or 128 x 128 tile is 64 values a
        thread, not 128 (for sm_90 the attention kernel compiles to 242-254 registers a
        thread at 4 warps, 112-116 at 8; no kernel spills: ``scripts/compile_kernels.py``)."""
        return 4 if tile <= 4096 else 8

    def __init__(self, model, batch: int):
        if model.kv_caches is None:
            raise RuntimeError("call model.setup_cache(batch) before building a FusedStep")
        dev = model.wte.weight.device
        check_fused_device(dev)
        self.k = _kernels()
        cfg = model.config
        self.model, self.batch = model, batch
        self.C, self.H, self.L = cfg.d_model, cfg.n_heads, cfg.context
        self.D = self.C // self.H
        f32 = dict(dtype=torch.float32, device=dev)
        self.x = torch.zeros(batch, self.C, **f32)  # the residual stream
        self.q = torch.zeros(batch, self.C, **f32)
        self.o = torch.zeros(batch, self.C, **f32)  # attention's output, heads side by side
        self.h = torch.zeros(batch, 4 * self.C, **f32)  # the MLP's hidden layer
        self.ids = torch.zeros(batch, dtype=torch.long, device=dev)
        self.classed = model.class_head is not None
        V = model.wte.weight.size(0)
        self.logits = None if self.classed else torch.zeros(batch, V, **f32)
        self.block_v = self.block_v_for(V)  # an attribute: tests set it small to read in blocks

    def hidden(self, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """tok (B, 1) at position pos (1,) -> the (B, C) float32 residual stream after the
        last block (before ``ln_f``); writes this position's keys and values into the caches."""
        k, m = self.k, self.model
        B, C, H, D, L = self.batch, self.C, self.H, self.D, self.L
        BC, BN = _pow2(C), self.BLOCK_N
        for i, (block, cache) in enumerate(zip(m.blocks, m.kv_caches)):
            a = block.attn
            k.qkv_kernel[(B, _cdiv(3 * C, BN))](
                self.x, tok, pos, m.wte.weight, m.wpe.weight, block.ln_1.weight, block.ln_1.bias,
                a.c_attn.weight, a.c_attn.bias, self.q, cache.k, cache.v, C, H, D, L,
                block.ln_1.eps, EMBED=i == 0, BLOCK_C=BC, BLOCK_N=BN, num_warps=self.warps(BC * BN))
            k.attention_kernel[(B, H)](self.q, cache.k, cache.v, self.o, pos, C, H, D, L, D ** -0.5,
                                       BLOCK_L=_pow2(L), BLOCK_D=_pow2(D), num_warps=self.warps(_pow2(L) * _pow2(D)))
            k.residual_kernel[(B, _cdiv(C, BN))](self.o, a.c_proj.weight, a.c_proj.bias, self.x,
                                                       C, C, BLOCK_IN=BC, BLOCK_N=BN, num_warps=self.warps(BC * BN))
            mlp = block.mlp
            k.mlp_in_kernel[(B, _cdiv(4 * C, BN))](
                self.x, block.ln_2.weight, block.ln_2.bias, mlp.c_fc.weight, mlp.c_fc.bias, self.h,
                C, 4 * C, block.ln_2.eps, BLOCK_C=BC, BLOCK_N=BN, num_warps=self.warps(BC * BN))
            k.residual_kernel[(B, _cdiv(C, BN))](self.h, mlp.c_proj.weight, mlp.c_proj.bias, self.x,
                                                       4 * C, C, BLOCK_IN=_pow2(4 * C), BLOCK_N=BN,
                                                       num_warps=self.warps(_pow2(4 * C) * BN))
        return self.x

    def draw(self, rows: RowSampling, seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """(B,) ids drawn from the output layer over ``self.x`` (after ``hidden``), as
        ``model.draw`` would; rows with top-k / top-p take ``model.draw`` itself."""
        m, B, C = self.model, self.batch, self.C
        if rows.filters:
            return m.draw(layer_norm(m.ln_f, self.x.to(m.wte.weight.dtype)), rows, seeds, steps)
        if self.classed:
            K = m.class_head.weight.size(0)
            S = m.wte.weight.size(0) // K
            self.k.class_draw_kernel[(B,)](
                self.x, m.ln_f.weight, m.ln_f.bias, m.class_head.weight, m.wte.weight, rows.temperature,
                seeds, steps, self.ids, C, K, S, m.ln_f.eps,
                BLOCK_C=_pow2(C), BLOCK_K=_pow2(K), BLOCK_S=_pow2(S),
                num_warps=self.warps(_pow2(C) * max(_pow2(K), _pow2(S))))
            return self.ids
        V = self.logits.size(1)
        BN = self.LOGITS_BLOCK_N
        self.k.logits_kernel[(B, _cdiv(V, BN))](
            self.x, m.ln_f.weight, m.ln_f.bias, m.wte.weight, self.logits, C, V, m.ln_f.eps,
            BLOCK_C=_pow2(C), BLOCK_N=BN, num_warps=self.warps(_pow2(C) * BN))
        self.k.flat_draw_kernel[(B,)](self.logits, rows.temperature, seeds, steps, self.ids, V,
                                      BLOCK_V=self.block_v, num_warps=self.warps(self.block_v))
        return self.ids

    def step(self, tok: torch.Tensor, pos: torch.Tensor, rows: RowSampling, seeds: torch.Tensor,
             steps: torch.Tensor) -> torch.Tensor:
        """One decode step: tok (B, 1) at pos (1,) -> (B,) next ids (a buffer reused each step)."""
        self.hidden(tok, pos)
        return self.draw(rows, seeds, steps)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)
