"""Benchmarks and failure drills: `python -m bench --help`."""
