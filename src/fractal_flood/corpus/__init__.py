"""Training text: reading a corpus (``reader.py``), tokenizing it once into memory-mapped
shards (``shards.py``), and the tensors training draws from it."""
