"""Prefect 3 flows. Each is a thin wrapper over library functions in ``autopack``; no business logic here."""

import autopack.logging  # noqa: F401  masks every log record, Prefect's API log handler's included
