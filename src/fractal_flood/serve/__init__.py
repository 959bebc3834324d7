"""The HTTP server: the FastAPI app (``app.py``), the engine in a process of its own
(``engine_process.py``), the OpenAI request schema, the Prometheus metrics, and the browser
playground (``static/``)."""
