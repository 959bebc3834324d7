"""Convert a ``CausalLM`` to Hugging Face's ``GPT2LMHeadModel`` with the same weights.

For the bench: the same network run through ``transformers.generate()`` is the stock
baseline our KV-cache + CUDA-graph decoding is compared against. GPT-2's ``Conv1D`` stores
its weight as (in, out), the transpose of ``nn.Linear``'s (out, in).
"""

from __future__ import annotations

import torch

from ..models.causal_lm import CausalLM


def _import_transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError("the Hugging Face conversion needs transformers: "
                          "pip install fractal-flood[hf]") from e
    return transformers


@torch.no_grad()
def to_hf_gpt2(model: CausalLM):
    """A ``transformers.GPT2LMHeadModel`` on the model's device and dtype, in eval mode,
    that gives the same logits as ``model(idx)``. A class-factored output layer
    (``head_classes``) has no GPT-2 equivalent: ValueError."""
    cfg = model.config
    if cfg.head_classes:
        raise ValueError(f"this model's output layer is class-factored ({cfg.head_classes} classes): "
                         "GPT2LMHeadModel has one softmax over the vocabulary, so it cannot hold it")
    transformers = _import_transformers()
    hf_cfg = transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.context, n_embd=cfg.d_model,
        n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=None,  # 4 * n_embd, as our MLP
        activation_function="gelu_new", layer_norm_epsilon=1e-5,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=None, eos_token_id=None,  # GPT-2's 50256 is outside our vocabulary
        tie_word_embeddings=True,
    )
    ref = model.wte.weight
    hf = transformers.GPT2LMHeadModel(hf_cfg).to(device=ref.device, dtype=ref.dtype)
    t = hf.transformer
    t.wte.weight.copy_(model.wte.weight)
    t.wpe.weight.copy_(model.wpe.weight)
    t.ln_f.load_state_dict(model.ln_f.state_dict())
    for ours, theirs in zip(model.blocks, t.h):
        theirs.ln_1.load_state_dict(ours.ln_1.state_dict())
        theirs.ln_2.load_state_dict(ours.ln_2.state_dict())
        for src, dst in [(ours.attn.c_attn, theirs.attn.c_attn), (ours.attn.c_proj, theirs.attn.c_proj),
                         (ours.mlp.c_fc, theirs.mlp.c_fc), (ours.mlp.c_proj, theirs.mlp.c_proj)]:
            dst.weight.copy_(src.weight.t())  # Linear (out, in) -> Conv1D (in, out)
            dst.bias.copy_(src.bias)
    if hf.lm_head.weight.data_ptr() != t.wte.weight.data_ptr():  # untied by this version
        hf.lm_head.weight.copy_(model.wte.weight)
    return hf.eval()
