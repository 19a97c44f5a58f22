"""Benchmarks of the CDS service: `python -m bench` runs them all (see bench/README.md)."""
