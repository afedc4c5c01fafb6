"""Prefect 3 flows. Each is a thin wrapper over library functions in ``autopack``; no business logic here."""
