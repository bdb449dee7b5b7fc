"""Thin route modules: parse, call the manager, shape the response."""
