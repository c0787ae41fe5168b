"""Majordomo Gateway's trial test suite."""
