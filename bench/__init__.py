"""Benchmarks: run from the repository root as modules, `python -m bench.load ...`; they import the
installed packages (model, index, service) and their own helpers (bench.common, bench.realdata)."""
