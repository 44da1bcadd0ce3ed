"""Benchmarks: `python -m bench.kernels` (kernels against their references). Results go to bench/results/."""
