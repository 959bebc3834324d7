"""Rendering: the renderer turns planned roots into text, level by level.

``canvas.py`` holds the two renderer passes (draw, score), ``choose.py`` the pure choice
functions (best-of-K, adaptive), ``flood.py`` the one loop over levels, ``sequential.py``
the item-by-item reference every flood is tested against, ``base.py`` the options and the
decoder interface, ``result.py`` what a render returns, and ``decoders.py`` the decoders
by name.
"""
