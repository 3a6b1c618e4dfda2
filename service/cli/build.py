"""Commands that make and measure versions in one process:

  service sample-catalog --out DIR [--items N] [--seed S]
  service build-index --catalog PATH --artifacts DIR [--interactions P] [--judgments P] [...]
  service experiment --catalog PATH --out DIR [--objectives ft,clip] [--seeds 0,1]
  service eval --artifacts DIR [--version V] --judgments PATH
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from service.cli.options import add_build_args, add_threads_arg, build_options_from, learning_options


def cmd_sample_catalog(a: argparse.Namespace) -> int:
    from model.sample.catalog import generate

    summary = generate(a.out, n_items=a.items, seed=a.seed)
    print(json.dumps(summary.to_dict(), indent=2, default=str))
    return 0


def cmd_build_index(a: argparse.Namespace) -> int:
    from service.build.pipeline import GateFailed, build_index

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank would build and publish
        raise ValueError("build-index: runs in one process; under torchrun use `train`, then `embed` and `index`")

    opts = build_options_from(a, publish=not a.no_publish, version=a.version, view_vectors=a.view_vectors)
    try:
        result = build_index(opts)
    except GateFailed as e:
        print(f"build-index: {e}", file=sys.stderr)
        return 3
    m = result.manifest
    report = json.loads((result.path / "report.json").read_text())
    inputs = report.get("inputs", {})
    rows = inputs.get("catalog", {})
    # per field: listings whose stored text was cut, and listings the encoder sees only the head of
    catalog = {k: rows.get(k) for k in ("rows", "loaded", "rejected", "dropped_images", "truncated")}
    catalog["encoder_truncated"] = inputs.get("encoder_truncated", {})
    lines = describe_build(inputs) + describe_negatives(inputs.get("negatives"), report.get("training", {}).get("negatives"))
    for line in lines:  # for a person: what was rejected, dropped and cut, and why
        print(line, file=sys.stderr)
    print(json.dumps({"version": result.version, "published": result.published, "path": str(result.path),
                      "n_items": m["n_items"], "index_key": m["index_key"], "catalog": catalog,
                      "metrics": m.get("metrics", {}), "timings": m.get("timings", {})}, indent=2, default=float))
    return 0


def describe_build(inputs: dict[str, Any]) -> list[str]:
    """The build report's inputs as console lines (stderr; stdout stays the JSON summary)."""
    from model.data.catalog import describe_load
    from model.data.interactions import describe_events

    lines = describe_load(inputs.get("catalog", {})) + describe_events(inputs.get("interactions") or {})
    for view, info in sorted((inputs.get("encoder_truncated") or {}).items()):
        if isinstance(info, dict) and info.get("truncated"):
            lines.append(f"encoder: {view}: {info['truncated']:,} of {info.get('listings', 0):,} listings longer than "
                         f"the {info.get('budget_tokens')}-token budget (the encoder sees their head)")
    return lines


def describe_negatives(file: dict[str, Any] | None, used: dict[str, Any] | None) -> list[str]:
    """--negatives as one console line: what the file held and what training could use."""
    if not file:
        return []
    used = used or {}
    return [f"negatives: {used.get('used', 0):,} of {file.get('rows', 0):,} rows train, for {used.get('queries', 0):,} "
            f"queries (not used: {file.get('unknown_items', 0):,} name no listing of the catalog, "
            f"{used.get('query_not_trained', 0):,} a query not trained on (no interactions, or held out for "
            f"validation), {used.get('is_positive', 0):,} a listing the query interacted with, "
            f"{used.get('same_title', 0):,} one with the exact title of such a listing, {used.get('duplicate', 0):,} "
            f"repeats; {file.get('rejected', 0):,} rows rejected)"]


def cmd_experiment(a: argparse.Namespace) -> int:
    from service.build.experiment import run_experiment
    from service.build.pipeline import build_options
    from service.build.report import markdown_table

    base = build_options(
        catalog=a.catalog, artifacts=a.out, interactions=a.interactions, judgments=a.judgments,
        epochs=a.epochs, batch_size=a.batch_size, device=a.device, skip_bad_rows=a.skip_bad_rows,
        images_root=a.images_root, columns=a.columns, index_key=a.index_key, text_weights=a.text_weights,
        image_weights=a.image_weights, image_cache=a.image_cache, dim=a.dim, progress=not a.no_progress,
        trainable_layers=a.trainable_layers, **learning_options(a),
    )
    results = run_experiment(base, a.out, a.objectives.split(","), [int(s) for s in a.seeds.split(",")])
    print(markdown_table(results))
    print(f"report: {a.out / 'report.md'}")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from service.build.evaluate import evaluate_version

    metrics = evaluate_version(a.artifacts, a.version, a.judgments, device=a.device, min_relevant=a.min_relevant)
    text = json.dumps(metrics, indent=2, default=float)
    if a.out:
        Path(a.out).write_text(text)
    print(text)
    if metrics.get("modes"):  # dense, lexical and hybrid side by side (service/build/evaluate.py)
        from service.build.report import modes_table

        print(modes_table(metrics["modes"]), file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    s = sub.add_parser("sample-catalog", help="generate the deterministic sample catalog")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--items", type=int, default=2000)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_sample_catalog)

    s = sub.add_parser("build-index", help="train, embed, index, evaluate and publish a version")
    add_build_args(s)
    s.set_defaults(func=cmd_build_index)

    s = sub.add_parser("experiment", help="compare objectives over seeds on one split; writes OUT/report.md")
    add_build_args(s, artifacts=False)
    s.add_argument("--out", required=True, type=Path, help="experiment folder (runs, results.jsonl, report)")
    s.add_argument("--objectives", default="ft,clip,oat,pmrl")
    s.add_argument("--seeds", default="0,1,2")
    s.set_defaults(func=cmd_experiment)

    s = sub.add_parser("eval", help="evaluate a version (published or not) against judgments")
    s.add_argument("--artifacts", required=True, type=Path)
    s.add_argument("--version", help="default: DIR/current")
    s.add_argument("--judgments", required=True, type=Path)
    s.add_argument("--min-relevant", type=float, help="relevance counted as relevant (default: above the lowest grade)")
    s.add_argument("--device", default="auto")
    s.add_argument("--out", type=Path, help="also write the JSON here")
    add_threads_arg(s)
    s.set_defaults(func=cmd_eval)
