"""Sandboxes: one bubblewrap process tree per session."""
