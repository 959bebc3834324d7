"""Randomness without generator state: counter-based draws (``draws.py``) and the manager's
token sampling (``tokens.py``, with ``host_inversion.py`` for small CPU batches)."""
