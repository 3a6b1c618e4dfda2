"""Copy a benchmark artifact's version and add a lexical index, so the engine can be timed in every mode.

    nice -n 19 .venv/bin/python -m bench.hybrid_artifact --src var/bench/a100k-ivf --out var/bench/a100k-hybrid

bench/make_artifact.py writes versions without a lexical index (they serve dense). This writes a
new artifact folder whose version is the source's files plus a lexical index over what the
listing metadata holds (`service.build.pipeline.record_documents`: title, category, attributes), with
fresh checksums, published as `current`. Then, e.g.:

    SERVICE_SEARCH_MODE=dense  nice -n 19 .venv/bin/python -m bench.inprocess --artifacts var/bench/a100k-hybrid
    SERVICE_SEARCH_MODE=hybrid nice -n 19 .venv/bin/python -m bench.inprocess --artifacts var/bench/a100k-hybrid
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from index.lexical import LexicalIndex
from index.store.artifacts import MANIFEST, ArtifactStore
from index.store.listings import ListingStore
from index.store.manifest import Manifest
from service.build.pipeline import record_documents


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    src = ArtifactStore(a.src)
    version = src.current_version()
    if version is None:
        raise SystemExit(f"{a.src}: no current version")
    folder = src.version_dir(version)
    manifest = src.manifest(version)
    out = ArtifactStore(a.out)
    with out.stage(version) as staged:
        for p in folder.iterdir():
            if p.is_file() and p.name != MANIFEST and not p.name.startswith("lexical."):
                shutil.copyfile(p, staged.path / p.name)
        t0 = time.perf_counter()
        docs = record_documents(list(ListingStore(staged.path / "listings.sqlite").records()))
        lex = LexicalIndex.build(docs)
        lex.save(staged.path)
        manifest["lexical"] = {**lex.describe(), "documents": "metadata", "build_seconds": time.perf_counter() - t0}
        out.commit(staged, Manifest.from_dict(manifest))
    out.publish(version)
    print(f"{a.out}: version {version} with a lexical index over {len(docs)} listings "
          f"({manifest['lexical']['build_seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
