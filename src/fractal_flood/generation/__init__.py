"""Text in, text out: the pipeline (one request, block by block), the engine (many requests,
continuous batching) and the stop-string and length limit both apply."""
