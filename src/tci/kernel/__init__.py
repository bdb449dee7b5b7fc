"""Host side of the worker protocol."""
