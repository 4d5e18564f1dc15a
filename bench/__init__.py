"""Benchmarks: each prints a table and writes a PNG plot under bench/out/ (git-ignored)."""
