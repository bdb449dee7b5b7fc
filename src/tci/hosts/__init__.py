"""Session hosts: where a live session runs (the seam under SessionManager).

base.py is the contract, in plain data; local.py runs sessions in sandboxes on this machine,
starting each with worker_start.py (named by session_ids.py), from the warm pool (pool.py) or
cold; selfcheck.py probes the protections and capacity.py counts what the machine holds at
start. Importing this package imports none of them: the manager depends on base.py alone."""
