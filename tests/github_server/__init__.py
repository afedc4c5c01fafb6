"""A local, stateful fake of the GitHub REST API for the calibration-PR tests (see app.py)."""
