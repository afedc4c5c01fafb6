"""``python -m uvicorn autopack.main:app``: the API app (settings are read when it starts, not here)."""

from autopack.api import create_app

app = create_app()
