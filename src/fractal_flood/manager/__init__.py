"""The manager's decoding: one stream with its KV cache (``stream.py``), many requests in
slots (``slots.py``), both over ``CausalLM.decode_hidden`` and one window rule
(``window.py``), and the decode step as fused Triton kernels (``fused_step.py``)."""
