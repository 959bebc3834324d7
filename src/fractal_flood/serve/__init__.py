"""The HTTP server: the FastAPI app (``app.py``), the OpenAI request schema, the Prometheus
metrics, and the browser playground (``static/``)."""
