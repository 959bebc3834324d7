"""The networks and their files: transformer layers, the causal LM (manager and AR peer) with
its class head, the renderer, their configs and presets, FLOP counts, and the model
directory (``checkpoint.py``)."""
