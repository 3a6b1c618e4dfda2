"""Commands over the versions of an artifact folder: which one is served, which are kept, what is hidden.

  service publish VERSION --artifacts DIR [--force]      roll forward or back (the gate applies)
  service versions --artifacts DIR                       list them, current marked
  service deny --artifacts DIR ID... [--remove] [--file F] | --list   hide listings now (deny-list)
  service gc --artifacts DIR --keep-versions N           retention, stale staging folders, deny-list pruning
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from service.cli.options import positive_int


def cmd_publish(a: argparse.Namespace) -> int:
    from index.store.artifacts import ArtifactStore, GateRefused

    store = ArtifactStore(a.artifacts)
    before = store.current_version()
    by = "service publish --force" if a.force else "service publish"
    try:
        forced = store.publish(a.version, force=a.force, by=by)
    except GateRefused as e:  # exit 3, as build-index when its gate fails; `current` untouched
        print(f"service publish: {e}; NOT published (--force publishes it anyway, recorded in its manifest)",
              file=sys.stderr)
        return 3
    print(json.dumps({"current": a.version, "previous": before, "forced_past_gate": forced}))
    return 0


def cmd_versions(a: argparse.Namespace) -> int:
    from index.store.artifacts import ArtifactStore

    store = ArtifactStore(a.artifacts)
    current = store.current_version()
    print("  (* = current: what `serve` loads)")
    for v in store.list_versions():
        m = store.manifest(v)
        mark = "*" if v == current else " "
        metrics = m.get("metrics", {})
        gate = m.get("gate", {})
        forced = " (forced)" if gate.get("overrides") else ""
        print(f"{mark} {v}  created={m.get('created', 'n/a')} objective={m.get('objective')} items={m.get('n_items')} "
              f"recall@100={fmt_metric(metrics.get('recall@100'))} ndcg@10={fmt_metric(metrics.get('ndcg@10'))} "
              f"gate={'passed' if gate.get('passed') else 'FAILED' + forced if gate else 'n/a'} "
              f"lexical={'yes' if m.get('lexical') else 'no (hybrid serves dense)'}"
              f" weights={weights_text(m.get('view_weights'))}")
    return 0


def fmt_metric(value: Any) -> str:
    """A metric as `versions` shows it: 3 decimals, n/a when unmeasured."""
    return f"{value:.3f}" if isinstance(value, int | float) and not isinstance(value, bool) else "n/a"


def weights_text(weights: dict[str, float] | None) -> str:
    """{"title": 0.31, ...} -> "title:0.31,image:0.29,...": the learned fusion weight per view
    type, heaviest first."""
    if not weights:
        return "n/a"
    return ",".join(f"{t}:{w:.2f}" for t, w in sorted(weights.items(), key=lambda kv: (-kv[1], kv[0])))


def cmd_deny(a: argparse.Namespace) -> int:
    from index.store import denylist

    path = denylist.denylist_path(a.artifacts)
    ids = list(a.ids) + (denylist.read_id_file(a.file, "--file") if a.file else [])
    if a.list:
        print("\n".join(sorted(denylist.read_ids(path))))
        return 0
    if not ids:
        raise ValueError("deny: give listing ids (or --file), or --list")
    unknown = [] if a.remove else unknown_ids(a.artifacts, ids)
    if unknown:  # still denied: an update may add them; but say so, a typo hides nothing
        shown = ", ".join(unknown[:10]) + (f" (+{len(unknown) - 10} more)" if len(unknown) > 10 else "")
        print(f"deny: warning: {len(unknown)} id(s) not in the current version: {shown}", file=sys.stderr)
    now = denylist.update(path, remove=ids) if a.remove else denylist.update(path, add=ids)
    print(json.dumps({"denylist": str(path), "denied": len(now), "changed": len(ids), "unknown": len(unknown)}))
    return 0


def unknown_ids(artifacts: Path, ids: list[str]) -> list[str]:
    """The ids the current version does not hold (all of them when nothing is published)."""
    from index.store.artifacts import ArtifactStore
    from index.store.listings import ListingStore

    store = ArtifactStore(artifacts)
    version = store.current_version()
    if version is None:
        return list(dict.fromkeys(ids))
    present = ListingStore(store.version_dir(version) / "listings.sqlite").present(ids)
    return [i for i in dict.fromkeys(ids) if i not in present]


def cmd_gc(a: argparse.Namespace) -> int:
    from index.store.artifacts import ArtifactStore
    from service.build.update import prune_denylist

    store = ArtifactStore(a.artifacts)
    deleted = store.retain(a.keep_versions)
    staging = store.clean_staging(a.staging_age_s)
    undenied = prune_denylist(a.artifacts)  # ids no kept version holds any more
    print(json.dumps({"current": store.current_version(), "deleted_versions": deleted, "removed_staging": staging,
                      "kept": store.list_versions(), "denylist_pruned": len(undenied)}, indent=2))
    return 0


def register(sub: Any) -> None:
    s = sub.add_parser("publish", help="point DIR/current at VERSION (roll forward or back)")
    s.add_argument("version")
    s.add_argument("--artifacts", required=True, type=Path)
    s.add_argument("--force", action="store_true",
                   help="publish a version whose gate failed (logged, recorded in its manifest)")
    s.set_defaults(func=cmd_publish)

    s = sub.add_parser("versions", help="list the versions in DIR")
    s.add_argument("--artifacts", required=True, type=Path)
    s.set_defaults(func=cmd_versions)

    s = sub.add_parser("deny", help="hide listings at once on every replica (DIR/denylist.txt)")
    s.add_argument("ids", nargs="*")
    s.add_argument("--artifacts", required=True, type=Path)
    s.add_argument("--file", type=Path, help="more ids, one per line")
    s.add_argument("--remove", action="store_true", help="take the ids off the deny-list")
    s.add_argument("--list", action="store_true", help="print the deny-list")
    s.set_defaults(func=cmd_deny)

    s = sub.add_parser("gc", help="delete all but the newest N versions (never current), stale staging folders, "
                       "and deny-list ids no kept version holds")
    s.add_argument("--artifacts", required=True, type=Path)
    s.add_argument("--keep-versions", type=positive_int, required=True, metavar="N",
                   help="keep the newest N >= 1 versions (current is never deleted)")
    s.add_argument("--staging-age-s", type=float, default=3600.0, help="staging folders older than this are debris")
    s.set_defaults(func=cmd_gc)
