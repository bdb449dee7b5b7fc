"""Sandboxes: the launcher (launcher.py) and its two start paths, bubblewrap (bwrap_starter.py)
and fork from a preloaded template (fork/)."""
