"""The `service` command: thin entry points that parse arguments and call typed functions.

One module per command family, each with `register(sub)`; shared option groups in options.py:

  build.py     sample-catalog, build-index, experiment, eval     (one process makes and measures a version)
  serve.py     serve                                             (the HTTP service)
  versions.py  publish, versions, deny, gc                       (what an artifact folder serves and keeps)
  stages.py    train, embed, index, update-index                 (the build as separate steps; torchrun)
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from service.cli import build, serve, stages, versions
from service.cli.options import Parser
from service.offline import enforce_offline

log = logging.getLogger("service")

# The command families, in --help order; each module's `register(sub)` adds its commands.
FAMILIES = (build, serve, versions, stages)


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="service", description="Multi-view two-tower retrieval service")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    for family in FAMILIES:
        family.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    enforce_offline()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `torchrun ... -m service.cli -- train ...`: the launcher's separator
        argv = argv[1:]
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    if getattr(args, "threads", None) is not None and args.command != "serve":  # serve: service/serving/workers.py
        from service.cpu_budget import configure_threads

        configure_threads(args.threads, passive=True)  # before the command imports torch and numpy
    try:
        return int(args.func(args))
    except (ValueError, OSError, RuntimeError) as e:
        # Domain errors (bad rows, bad files, bad artifacts) and I/O failures (a full disk, a
        # permission) print one clear line, no traceback; `current` is left as it was.
        print(f"service {args.command}: error: {e}", file=sys.stderr)
        return 2
