"""Benchmarks of tci against its peers (ipykernel, Jupyter Kernel Gateway, in-process exec):
`python -m bench` (`make bench`). Benchmarks are not tests: they print a table, write
docs/benchmarks.md and a plot, and assert nothing about timings."""
