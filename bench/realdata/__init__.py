"""Results on real data (docs/RESULTS.md): homedepot (shopper queries) and ikea (multi-view).

    .venv/bin/python -m bench.realdata.homedepot [--steps ...]
    .venv/bin/python -m bench.realdata.ikea [--steps ...]

The datasets are READ from /work/shared/data (or $REALDATA_DIR); they are never copied into the
repository. Everything the scripts write goes under var/realdata/ (ignored by git).
"""
