"""Training: the run (``run.py``), its resumable state, the language-model and renderer tasks
with their losses and noise, and data parallelism under torchrun."""
