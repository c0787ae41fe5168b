"""Majordomo Gateway: an LLM reverse proxy that records exact usage and cost."""

__version__ = "0.1.0"
