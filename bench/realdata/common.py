"""Shared plumbing of the real-data scripts: where the data is, resumable steps, tables.

Each script is a list of named steps; a step's result is cached as JSON under var/realdata/<name>/
and a rerun skips every finished step (delete the JSON, or pass --redo STEP, to run it again).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("REALDATA_DIR", "/work/shared/data"))
OUT = Path(os.environ.get("REALDATA_OUT", REPO / "var" / "realdata"))

log = logging.getLogger("bench.realdata")


def require(path: Path) -> Path:
    """The dataset file, or exit with a message saying it is missing (the data is never in the repo)."""
    if not path.exists():
        raise SystemExit(f"{path}: missing. The real-data benchmarks read ../shared/data (set REALDATA_DIR to "
                         "another copy); see its README.md. Nothing was run.")
    return path


def show_command(argv: Sequence[str], note: str = "") -> str:
    """Print (and return) the command line a step represents, so it can be rerun by hand."""
    line = " ".join(shlex.quote(str(a)) for a in argv)
    print(f"$ {line}" + (f"    # {note}" if note else ""), flush=True)
    return line


class Steps:
    """Named, cached steps: `run(name, fn)` returns fn()'s JSON-able result, computed once."""

    def __init__(self, folder: Path, redo: Sequence[str] = ()) -> None:
        self.folder = folder
        self.redo = set(redo)
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def done(self, name: str) -> bool:
        """Finished and not asked to be redone (a step runs unless done)."""
        return self.have(name) and name not in self.redo

    def have(self, name: str) -> bool:
        """A result is on disk (tables read whatever is there)."""
        return self.path(name).is_file()

    def load(self, name: str) -> Any:
        return json.loads(self.path(name).read_text())

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        if self.done(name):
            print(f"[{name}] cached: {self.path(name)}", flush=True)
            return self.load(name)
        print(f"[{name}] running (load {os.getloadavg()[0]:.1f})", flush=True)
        t0 = time.perf_counter()
        result = fn()
        if isinstance(result, dict):
            result.setdefault("seconds", round(time.perf_counter() - t0, 1))
            result.setdefault("loadavg_1m_at_end", round(os.getloadavg()[0], 2))
        tmp = self.path(name).with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=1, default=float))
        tmp.replace(self.path(name))
        print(f"[{name}] done in {time.perf_counter() - t0:.0f} s", flush=True)
        return result


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def with_ci(metric: dict[str, Any], key: str) -> str:
    """'0.412 [0.398, 0.426]' from {key: mean, 'ci': {key: [lo, hi]}}."""
    if key not in metric or metric[key] is None:
        return "–"
    ci = (metric.get("ci") or {}).get(key)
    return f"{metric[key]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
