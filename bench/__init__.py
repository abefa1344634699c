"""Benchmarks that print ratios against the bounds named in DESIGN.md §12."""
