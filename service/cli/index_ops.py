"""Index-operations commands of `service` (registered by service/cli/__init__.py):

  service train --catalog PATH --artifacts DIR [--run RUN] [build options]   train once -> DIR/runs/RUN/
      (DDP: torchrun --standalone --nproc-per-node N -m service.cli -- train ...)
  service embed --artifacts DIR --run RUN [--shard i/n]                      embed one shard with RUN's model
  service index --artifacts DIR --run RUN [--publish]                        merge shards, index, tune, gate, write
  service update-index --artifacts DIR [--catalog-delta PATH] [--delete-ids FILE]   upsert/delete, no retraining
  service deny --artifacts DIR ID... [--remove] [--file F] | --list          hide listings now (deny-list)
  service gc --artifacts DIR --keep-versions N                  retention, stale staging folders, deny-list pruning
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def threads_count(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n}: 0 (the CPUs this process may use) or N > 0")
    return n


def add_threads_arg(p: argparse.ArgumentParser, help: str = "CPU threads of every pool (torch, OpenMP, BLAS, "
                    "faiss); 0: the CPUs this process may use (affinity, cgroup quota; docs/PERFORMANCE.md)") -> None:
    p.add_argument("--threads", type=threads_count, default=0, help=help)


def add_learning_args(p: argparse.ArgumentParser) -> None:
    """Early stopping and mined hard negatives (model/train/validation.py, model/train/negatives.py)."""
    p.add_argument("--patience", type=int, default=0,
                   help="stop when validation nDCG@10 has not improved for N epochs and keep the best epoch "
                   "(--epochs is then the most it trains; 0: off)")
    p.add_argument("--validation-judgments", type=Path,
                   help="judgments.jsonl scored after every epoch (default with --patience: a share of the "
                   "interaction queries, held out by query hash)")
    p.add_argument("--validation-fraction", type=float,
                   help="share of the interaction queries held out and scored every epoch when no "
                   "--validation-judgments (default with --patience: 0.1)")
    p.add_argument("--min-relevant", type=float,
                   help="relevance counted as relevant in --judgments and --validation-judgments "
                   "(default: above the file's lowest grade)")
    p.add_argument("--hard-negatives", type=int, default=0,
                   help="per pair, listings mined before each epoch from the current model's ranking "
                   "(never the query's own positives; 0: in-batch negatives only)")


def learning_options(a: argparse.Namespace) -> dict[str, Any]:
    """The build_options keywords of add_learning_args."""
    overrides = {k: v for k, v in (("patience", a.patience), ("hard_negatives", a.hard_negatives)) if v}
    return {"train_overrides": overrides, "validation_judgments": a.validation_judgments,
            "validation_fraction": a.validation_fraction, "min_relevant": a.min_relevant}


def add_index_choice_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--memory-budget-gb", type=float, help="index memory per replica: picks a smaller family if needed")
    p.add_argument("--target-ann-recall", type=float, default=0.95, help="tune nprobe/efSearch to this ANN recall")
    p.add_argument("--served-k", type=int, default=10, help="the k recall is tuned (and gated) at")


def print_result(result: Any) -> None:
    m = result.manifest
    print(json.dumps({"version": result.version, "published": result.published, "path": str(result.path),
                      "n_items": m["n_items"], "index_key": m["index_key"], "index_params": m.get("index_params"),
                      "metrics": m.get("metrics", {}), "timings": m.get("timings", {})}, indent=2, default=float))


def cmd_train(a: argparse.Namespace) -> int:
    """One process, or one rank of `torchrun ... -m service.cli -- train ...` (DDP: rank and
    device from torchrun's environment, rank 0 writes the run; model/train/distributed.py)."""
    from model.train.distributed import init_distributed, shutdown
    from service.build import stages
    from service.build.pipeline import build_options

    opts = build_options(
        catalog=a.catalog, artifacts=a.artifacts, interactions=a.interactions, judgments=a.judgments,
        objective=a.objective, epochs=a.epochs, batch_size=a.batch_size, device=a.device, seed=a.seed,
        skip_bad_rows=a.skip_bad_rows, images_root=a.images_root, columns=a.columns, index_key=a.index_key,
        text_weights=a.text_weights, image_weights=a.image_weights, image_cache=a.image_cache, dim=a.dim,
        min_recall_at_100=a.min_recall_at_100, min_ann_recall=a.min_ann_recall, progress=not a.no_progress,
        keep_versions=a.keep_versions, memory_budget_gb=a.memory_budget_gb, target_ann_recall=a.target_ann_recall,
        served_k=a.served_k, **learning_options(a),
    )
    ctx = init_distributed(a.device)
    try:
        run = stages.train_run(opts, a.run, dist=ctx)
    finally:
        shutdown()
    if ctx.is_main:
        print(json.dumps({"run": run.name, "path": str(run.path), "model_digest": run.info["model_digest"],
                          "listings": run.info["catalog"]["listings"], "world_size": ctx.world}, indent=2))
    return 0


def cmd_embed(a: argparse.Namespace) -> int:
    from service.build.stages import embed_shard, parse_shard

    shard, n = parse_shard(a.shard)
    path = embed_shard(a.artifacts, a.run, shard, n, device=a.device, progress=not a.no_progress)
    print(json.dumps({"run": a.run, "shard": f"{shard}/{n}", "path": str(path)}))
    return 0


def cmd_index(a: argparse.Namespace) -> int:
    from service.build.pipeline import GateFailed
    from service.build.stages import index_run

    try:
        result = index_run(a.artifacts, a.run, publish=a.publish, version=a.version, keep_versions=a.keep_versions,
                           index_key=a.index_key, memory_budget_gb=a.memory_budget_gb,
                           target_ann_recall=a.target_ann_recall, served_k=a.served_k, device=a.device,
                           min_recall_at_100=a.min_recall_at_100, min_ann_recall=a.min_ann_recall)
    except GateFailed as e:
        print(f"index: {e}", file=sys.stderr)
        return 3
    print_result(result)
    return 0


def cmd_update_index(a: argparse.Namespace) -> int:
    from service.build.pipeline import GateFailed
    from service.build.update import delta_summary, update_index

    if a.catalog_delta is None and a.delete_ids is None:
        raise ValueError("update-index: give --catalog-delta and/or --delete-ids")
    try:
        result = update_index(a.artifacts, a.catalog_delta, a.delete_ids, base=a.base, publish=not a.no_publish,
                              version=a.version, keep_versions=a.keep_versions, device=a.device,
                              skip_bad_rows=a.skip_bad_rows, images_root=a.images_root, columns=a.columns,
                              min_ann_recall=a.min_ann_recall, progress=not a.no_progress)
    except GateFailed as e:
        print(f"update-index: {e}", file=sys.stderr)
        return 3
    print(json.dumps(delta_summary(result), indent=2, default=float))
    return 0


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


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (the newest N versions are kept, and always current), got {value}")
    return value


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


def add_index_commands(sub: Any) -> None:
    from service.cli import _add_build_args  # late: cli imports this module

    s = sub.add_parser("train", help="train once and write DIR/runs/RUN/ (for sharded embedding)")
    _add_build_args(s)
    s.add_argument("--run", help="run name (default: timestamp)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("embed", help="embed shard i of n of the catalog with a run's model")
    s.add_argument("--artifacts", required=True, type=Path)
    s.add_argument("--run", required=True)
    s.add_argument("--shard", default="0/1", help="i/n: contiguous rows [i*N//n, (i+1)*N//n) of the catalog")
    s.add_argument("--device", help="default: the run's")
    s.add_argument("--no-progress", action="store_true")
    add_threads_arg(s)
    s.set_defaults(func=cmd_embed)

    s = sub.add_parser("index", help="merge a run's shards, build + tune the index, evaluate, write a version")
    s.add_argument("--artifacts", required=True, type=Path)
    s.add_argument("--run", required=True)
    s.add_argument("--publish", action="store_true", help="also point DIR/current at the new version")
    s.add_argument("--version", help="version name (default: timestamp-digest)")
    s.add_argument("--keep-versions", type=int, help="after publishing, keep the newest N versions")
    s.add_argument("--index-key", help="faiss index_factory string (default: the run's, usually auto)")
    s.add_argument("--memory-budget-gb", type=float)
    s.add_argument("--target-ann-recall", type=float)
    s.add_argument("--served-k", type=int)
    s.add_argument("--min-recall-at-100", type=float)
    s.add_argument("--min-ann-recall", type=float)
    s.add_argument("--device", help="for the query tower (tuning, evaluation); default: the run's")
    add_threads_arg(s)
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("update-index", help="upsert/delete listings with the current towers; publish a new version")
    s.add_argument("--artifacts", required=True, type=Path)
    s.add_argument("--catalog-delta", type=Path, help="listings to upsert; JSONL rows {\"id\", \"deleted\": true} delete")
    s.add_argument("--delete-ids", type=Path, help="file of listing ids to delete, one per line")
    s.add_argument("--base", help="version to update (default: DIR/current)")
    s.add_argument("--no-publish", action="store_true")
    s.add_argument("--version")
    s.add_argument("--keep-versions", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--skip-bad-rows", action="store_true")
    s.add_argument("--images-root", type=Path)
    s.add_argument("--columns")
    s.add_argument("--min-ann-recall", type=float)
    s.add_argument("--no-progress", action="store_true")
    add_threads_arg(s)
    s.set_defaults(func=cmd_update_index)

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
