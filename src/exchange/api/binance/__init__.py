"""The Binance-compatible spot API under ``/api/v3/``: a second dialect over the same services."""
