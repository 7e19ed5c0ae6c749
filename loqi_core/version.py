"""loqi-core's version: every plugin releases in lockstep with it (``pyproject.toml`` says the same)."""

__version__ = "0.1.0"
