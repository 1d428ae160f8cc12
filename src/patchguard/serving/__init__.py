"""Serving a checkpoint over HTTP (``patchguard serve``; the optional ``serve`` extra).

``batcher`` collects concurrent requests for a few milliseconds and runs one forward pass for
all of them; ``uploads`` checks and decodes uploaded images (every refusal a 4xx with a
message); ``app`` builds the FastAPI application around a loaded detector. FastAPI and uvicorn
are imported only by ``app``, only when a server is built.
"""
