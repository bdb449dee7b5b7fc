"""Session hosts: where a live session runs (the seam under SessionManager).

base.py is the contract, in plain data; local.py runs sessions in sandboxes on this machine.
Importing this package imports neither: the manager depends on base.py alone."""
