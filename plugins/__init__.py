"""Built-in transfer-bench plugins. Each module implements the same hooks a third-party
plugin would (see ``harness/api/hookspecs.py``)."""
