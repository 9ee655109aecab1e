"""A spot cryptocurrency exchange with an exact ledger and a single-writer matching engine."""

__version__ = "0.1.0"
