"""Peers of benchmarks/bench_models.py: the authors' code and spikingjelly 2.x networks."""
