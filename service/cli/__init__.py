"""The `service` command: thin entry points that parse arguments and call typed functions.

  service sample-catalog --out DIR [--items N] [--seed S]
  service build-index --catalog PATH --artifacts DIR [--interactions P] [--judgments P] [...]
  service serve --artifacts DIR [--host H] [--port P] [--workers N]
  service eval --artifacts DIR [--version V] --judgments PATH
  service publish VERSION --artifacts DIR [--force]
  service versions --artifacts DIR
  service train | embed | index | update-index | deny | gc   (service/cli/index_ops.py)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.cli.index_ops import (
    add_index_choice_args,
    add_index_commands,
    add_learning_args,
    add_threads_arg,
    learning_options,
)
from service.offline import enforce_offline

log = logging.getLogger("service")


def _add_build_args(p: argparse.ArgumentParser, artifacts: bool = True) -> None:
    p.add_argument("--catalog", required=True, type=Path, help="catalog .jsonl, .csv or .parquet")
    if artifacts:
        p.add_argument("--artifacts", required=True, type=Path, help="artifact folder DIR")
    p.add_argument("--interactions", type=Path, help="interactions.jsonl (query, item_id, weight), or the events "
                   "log of POST /events (detected by its action field; docs/DATA.md)")
    p.add_argument("--judgments", type=Path, help="judgments.jsonl: evaluate before publishing")
    p.add_argument("--objective", default="ft", choices=["ft", "clip", "oat", "pmrl", "ft-allpairs"])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-bad-rows", action="store_true", help="skip and report bad rows instead of stopping")
    p.add_argument("--images-root", type=Path, help="another folder image paths may point into")
    p.add_argument("--columns", help="rename source columns: title=name,id=sku")
    p.add_argument("--index-key", default="auto", help="faiss index_factory string, or auto")
    add_index_choice_args(p)
    p.add_argument("--text-weights", default="", help="folder of other BERT-family weights (default: bundled MiniLM)")
    p.add_argument("--image-weights", default="", help="EfficientNet-Lite0 state dict (default: bundled)")
    p.add_argument("--image-cache", type=Path, help="image feature cache (default: DIR/cache/images)")
    p.add_argument("--dim", type=int, default=256, help="embedding dimension")
    p.add_argument("--min-recall-at-100", type=float, help="publish gate on recall@100 (needs --judgments)")
    p.add_argument("--min-ann-recall", type=float, help="publish gate on ANN recall at the served k")
    p.add_argument("--no-publish", action="store_true", help="write the version but leave DIR/current alone")
    p.add_argument("--keep-versions", type=int, default=0, help="delete all but the newest N versions (0: keep all)")
    p.add_argument("--version", help="version name (default: timestamp-digest)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--view-vectors", default="auto", choices=["auto", "on", "off"],
                   help="write per-view vectors for /search explain (auto: up to 200,000 listings; "
                   "S*d*2 + S*2 bytes each)")
    add_learning_args(p)
    add_threads_arg(p)


def cmd_sample_catalog(a: argparse.Namespace) -> int:
    from model.sample.catalog import generate

    summary = generate(a.out, n_items=a.items, seed=a.seed)
    print(json.dumps(summary.to_dict() if hasattr(summary, "to_dict") else summary.__dict__, indent=2, default=str))
    return 0


def cmd_build_index(a: argparse.Namespace) -> int:
    import os

    from service.build.pipeline import GateFailed, build_index, build_options

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank would build and publish
        raise ValueError("build-index: runs in one process; under torchrun use `train`, then `embed` and `index`")

    opts = build_options(
        catalog=a.catalog, artifacts=a.artifacts, interactions=a.interactions, judgments=a.judgments,
        objective=a.objective, epochs=a.epochs, batch_size=a.batch_size, device=a.device, seed=a.seed,
        skip_bad_rows=a.skip_bad_rows, images_root=a.images_root, columns=a.columns, index_key=a.index_key,
        text_weights=a.text_weights, image_weights=a.image_weights, image_cache=a.image_cache, dim=a.dim,
        publish=not a.no_publish, min_recall_at_100=a.min_recall_at_100, min_ann_recall=a.min_ann_recall,
        progress=not a.no_progress, version=a.version, keep_versions=a.keep_versions,
        memory_budget_gb=a.memory_budget_gb, target_ann_recall=a.target_ann_recall, served_k=a.served_k,
        view_vectors=a.view_vectors, **learning_options(a),
    )
    try:
        result = build_index(opts)
    except GateFailed as e:
        print(f"build-index: {e}", file=sys.stderr)
        return 3
    m = result.manifest
    inputs = json.loads((result.path / "report.json").read_text()).get("inputs", {})
    rows = inputs.get("catalog", {})
    # per field: listings whose stored text was cut, and listings the encoder sees only the head of
    catalog = {k: rows.get(k) for k in ("rows", "loaded", "rejected", "dropped_images", "truncated")}
    catalog["encoder_truncated"] = inputs.get("encoder_truncated", {})
    for line in describe_build(inputs):  # for a person: what was rejected, dropped and cut, and why
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


def cmd_serve(a: argparse.Namespace) -> int:
    import signal

    from service.serving.workers import serve

    # SIGTERM (Kubernetes' stop) is a request, not an error: uvicorn drains in-flight requests, then
    # re-raises the signal it caught to the handler found here, which exits 0 (the default handler
    # would kill the process, status -15, after a clean drain). Before uvicorn starts: exit at once.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    overrides: dict[str, Any] = {"artifacts": a.artifacts, "host": a.host, "port": a.port,
                                 "threads": a.threads or None}  # 0: SERVICE_THREADS, else auto
    serve(overrides, workers=a.workers)  # docs/SERVING.md: workers, metrics, memory
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


def cmd_experiment(a: argparse.Namespace) -> int:
    from service.build.experiment import run_experiment
    from service.build.pipeline import build_options
    from service.build.report import markdown_table

    base = build_options(
        catalog=a.catalog, artifacts=a.out, interactions=a.interactions, judgments=a.judgments,
        epochs=a.epochs, batch_size=a.batch_size, device=a.device, skip_bad_rows=a.skip_bad_rows,
        images_root=a.images_root, columns=a.columns, index_key=a.index_key, text_weights=a.text_weights,
        image_weights=a.image_weights, image_cache=a.image_cache, dim=a.dim, progress=not a.no_progress,
        **learning_options(a),
    )
    results = run_experiment(base, a.out, a.objectives.split(","), [int(s) for s in a.seeds.split(",")])
    print(markdown_table(results))
    print(f"report: {a.out / 'report.md'}")
    return 0


# `service CMD --help` ends with these (the commands as README and docs/OPERATIONS.md write them).
EXAMPLES = {
    "sample-catalog": "service sample-catalog --out var/sample --items 2000",
    "build-index": "service build-index --catalog var/sample/catalog.jsonl --interactions var/sample/interactions.jsonl \\\n"
                   "    --judgments var/sample/judgments.jsonl --artifacts var/artifacts\n"
                   "service build-index --catalog products.csv --columns id=sku,title=name --artifacts DIR --skip-bad-rows",
    "experiment": "service experiment --catalog var/sample/catalog.jsonl --out var/exp --objectives ft,clip --seeds 0,1",
    "serve": "service serve --artifacts var/artifacts --port 8000\nSERVICE_SEARCH_MODE=dense service serve --artifacts DIR --workers 2",
    "eval": "service eval --artifacts var/artifacts --judgments var/sample/judgments.jsonl",
    "publish": "service publish 20261203-0712-ab12cd --artifacts DIR     # roll forward or back\n"
               "service publish VERSION --artifacts DIR --force           # past a failed gate (recorded)",
    "versions": "service versions --artifacts DIR",
    "train": "service train --catalog var/sample/catalog.jsonl --artifacts DIR --run r1\n"
             "torchrun --standalone --nproc-per-node 2 -m service.cli train --catalog ... --artifacts DIR --run r1",
    "embed": "service embed --artifacts DIR --run r1 --shard 0/4",
    "index": "service index --artifacts DIR --run r1 --publish",
    "update-index": "service update-index --artifacts DIR --catalog-delta delta.jsonl --delete-ids gone.txt",
    "deny": "service deny --artifacts DIR L000123 L000456\nservice deny --artifacts DIR --list",
    "gc": "service gc --artifacts DIR --keep-versions 3",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown beside each option's help (unless unset or already named there); the
    examples epilog keeps its lines."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "default" in text or "(0:" in text:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """Every command's parser: defaults in --help and an examples epilog (EXAMPLES)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        name = str(kwargs.get("prog", "")).split()[-1:]
        example = EXAMPLES.get(name[0]) if name else None
        if example and "epilog" not in kwargs:
            kwargs["epilog"] = "example:\n" + "\n".join(f"  {line}" for line in example.splitlines())
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        """An option without help text still shows its default."""
        default = kwargs.get("default")
        if "help" not in kwargs and default is not None and default is not False and str(args[0]).startswith("-"):
            kwargs["help"] = "default: %(default)s"
        return super().add_argument(*args, **kwargs)


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="service", description="Multi-view two-tower retrieval service")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sample-catalog", help="generate the deterministic sample catalog")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--items", type=int, default=2000)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_sample_catalog)

    s = sub.add_parser("build-index", help="train, embed, index, evaluate and publish a version")
    _add_build_args(s)
    s.set_defaults(func=cmd_build_index)

    s = sub.add_parser("experiment", help="compare objectives over seeds on one split; writes OUT/report.md")
    _add_build_args(s, artifacts=False)
    s.add_argument("--out", required=True, type=Path, help="experiment folder (runs, results.jsonl, report)")
    s.add_argument("--objectives", default="ft,clip,oat,pmrl")
    s.add_argument("--seeds", default="0,1,2")
    s.set_defaults(func=cmd_experiment)

    s = sub.add_parser("serve", help="serve DIR/current over HTTP")
    s.add_argument("--artifacts", type=Path)
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (docs/SERVING.md)")
    add_threads_arg(s, help="CPU threads of all workers together (0: SERVICE_THREADS, else the CPUs this "
                    "process may use)")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("eval", help="evaluate a version (published or not) against judgments")
    s.add_argument("--artifacts", required=True, type=Path)
    s.add_argument("--version", help="default: DIR/current")
    s.add_argument("--judgments", required=True, type=Path)
    s.add_argument("--min-relevant", type=float, help="relevance counted as relevant (default: above the lowest grade)")
    s.add_argument("--device", default="auto")
    s.add_argument("--out", type=Path, help="also write the JSON here")
    add_threads_arg(s)
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("publish", help="point DIR/current at VERSION (roll forward or back)")
    s.add_argument("version")
    s.add_argument("--artifacts", required=True, type=Path)
    s.add_argument("--force", action="store_true",
                   help="publish a version whose gate failed (logged, recorded in its manifest)")
    s.set_defaults(func=cmd_publish)

    s = sub.add_parser("versions", help="list the versions in DIR")
    s.add_argument("--artifacts", required=True, type=Path)
    s.set_defaults(func=cmd_versions)

    add_index_commands(sub)  # train, embed, index, update-index, deny, gc (service/cli/index_ops.py)
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

