"""Database layer: engine factory, models, migrations and the DB identity guard."""
