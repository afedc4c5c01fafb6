"""What the original Autopack shipped and its users still run, kept apart from autopack's own method.

``analyze_v3``: the original's ``[TokenEstimationV2]`` log analyser (``autopack analyze v3``,
``scripts/analyze_token_telemetry_v3.py``), tiers and metrics as it had them.
"""
