"""npf-loyalty: which voluntary pension contracts are about to end, and why."""

__version__ = "0.1.0"
