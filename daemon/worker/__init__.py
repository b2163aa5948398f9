"""The worker process: its loop and parts (see loop.py)."""

from .loop import Worker, main

__all__ = ["Worker", "main"]
