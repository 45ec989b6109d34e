"""ablate: compose, sweep and compare small CNN training runs."""

__version__ = "0.1.0"
