"""Fixtures and helpers shared by the test modules (real databases, a real browser)."""
