"""Seeded synthetic data for training, tests and the demo (never the running service)."""

__all__: list[str] = []
