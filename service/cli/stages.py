"""The build as separate commands, for catalogs embedded by several workers (service/build/stages.py):

  service train --catalog PATH --artifacts DIR [--run RUN] [build options]   train once -> DIR/runs/RUN/
      (DDP: torchrun --standalone --nproc-per-node N -m service.cli -- train ...)
  service embed --artifacts DIR --run RUN [--shard i/n]                      embed one shard with RUN's model
  service index --artifacts DIR --run RUN [--publish]                        merge shards, index, tune, gate, write
  service update-index --artifacts DIR [--catalog-delta PATH] [--delete-ids FILE]   upsert/delete, no retraining
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from service.cli.options import add_build_args, add_threads_arg, build_options_from


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

    opts = build_options_from(a)
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


def register(sub: Any) -> None:
    s = sub.add_parser("train", help="train once and write DIR/runs/RUN/ (for sharded embedding)")
    add_build_args(s)
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
