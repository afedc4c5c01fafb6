"""``python -m autopack …`` is the ``autopack`` command (the console script ``autopack.cli:run``)."""

from autopack.cli import run

if __name__ == "__main__":
    run()
