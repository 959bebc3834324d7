"""The decoders' names, in a module without torch so that ``--help`` stays fast."""

DECODERS = ("flood", "adaptive", "sequential")
