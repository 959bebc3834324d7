"""The text hierarchy: the levels (roots, chunks, characters), their specs, the multi-level
BPE tokenizer and the renderer's unified vocabulary over the levels."""
