"""The in-sandbox worker: an IPython shell driven over a framed pipe protocol.

Everything in this package runs inside the sandbox with the runtime's Python, so it
imports nothing from the rest of `tci` (only relative imports within this package).
"""
