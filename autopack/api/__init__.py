"""The HTTP API (FastAPI): health and DB identity, runs and phases, and the endpoints a drain worker uses."""

from autopack.api.app import create_app

__all__ = ["create_app"]
