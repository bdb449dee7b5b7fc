"""Host side of the worker protocol, in reading order: driver.py (WorkerConnection: a request
out, its outputs back, interrupt, death), frames.py (the worker's event frames read as hostile
input), outputs.py (frames -> TCI outputs within the call's budget), coalesce.py (streamed
text in whole lines), output_limits.py (what a call's outputs may cost) and ends.py (EndKind:
how a call and a session end, in every vocabulary)."""
