"""What several `service` commands share: the parser class with defaults and examples in --help,
and the option groups (build, learning, index choice, threads) with their conversion to BuildOptions."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from model.config import OBJECTIVES  # the names model/objectives REGISTRY builds

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
             "torchrun --standalone --nproc-per-node 2 -m service.cli -- train --catalog ... --artifacts DIR --run r1",
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


def threads_count(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n}: 0 (the CPUs this process may use) or N > 0")
    return n


def add_threads_arg(p: argparse.ArgumentParser, help: str = "CPU threads of every pool (torch, OpenMP, BLAS, "
                    "faiss); 0: the CPUs this process may use (affinity, cgroup quota; docs/PERFORMANCE.md)") -> None:
    p.add_argument("--threads", type=threads_count, default=0, help=help)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (the newest N versions are kept, and always current), got {value}")
    return value


def add_build_args(p: argparse.ArgumentParser, artifacts: bool = True) -> None:
    p.add_argument("--catalog", required=True, type=Path, help="catalog .jsonl, .csv or .parquet")
    if artifacts:
        p.add_argument("--artifacts", required=True, type=Path, help="artifact folder DIR")
    p.add_argument("--interactions", type=Path, help="interactions.jsonl (query, item_id, weight), or the events "
                   "log of POST /events (detected by its action field; docs/DATA.md)")
    p.add_argument("--judgments", type=Path, help="judgments.jsonl: evaluate before publishing")
    p.add_argument("--objective", default="ft", choices=OBJECTIVES, help="training objective (model/objectives)")
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
    p.add_argument("--trainable-layers", type=int, default=1, metavar="N",
                   help="top MiniLM layers fine-tuned (1-6; the rest run once per text, cached): more is "
                   "better on Home Depot and slower per step (docs/RESULTS.md, docs/PERFORMANCE.md)")
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


def add_learning_args(p: argparse.ArgumentParser) -> None:
    """Early stopping, mined and judged hard negatives (model/train/validation.py, model/train/negatives.py,
    model/train/trainer.py)."""
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
    p.add_argument("--negatives", type=Path,
                   help="negatives.jsonl (query, item_id): listings judged wrong for a training query; each "
                   "epoch one per pair joins the batch's softmax, like a mined negative (docs/DATA.md)")


def learning_options(a: argparse.Namespace) -> dict[str, Any]:
    """The build_options keywords of add_learning_args."""
    overrides = {k: v for k, v in (("patience", a.patience), ("hard_negatives", a.hard_negatives)) if v}
    return {"train_overrides": overrides, "validation_judgments": a.validation_judgments,
            "validation_fraction": a.validation_fraction, "min_relevant": a.min_relevant, "negatives": a.negatives}


def add_index_choice_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--memory-budget-gb", type=float, help="index memory per replica: picks a smaller family if needed")
    p.add_argument("--target-ann-recall", type=float, default=0.95, help="tune nprobe/efSearch to this ANN recall")
    p.add_argument("--served-k", type=int, default=10, help="the k recall is tuned (and gated) at")


def build_options_from(a: argparse.Namespace, **extra: Any) -> Any:
    """The BuildOptions of `add_build_args` (+ `extra`): build-index and train read the same options."""
    from service.build.pipeline import build_options

    return build_options(
        catalog=a.catalog, artifacts=a.artifacts, interactions=a.interactions, judgments=a.judgments,
        objective=a.objective, epochs=a.epochs, batch_size=a.batch_size, device=a.device, seed=a.seed,
        skip_bad_rows=a.skip_bad_rows, images_root=a.images_root, columns=a.columns, index_key=a.index_key,
        text_weights=a.text_weights, image_weights=a.image_weights, image_cache=a.image_cache, dim=a.dim,
        min_recall_at_100=a.min_recall_at_100, min_ann_recall=a.min_ann_recall, progress=not a.no_progress,
        keep_versions=a.keep_versions, memory_budget_gb=a.memory_budget_gb, target_ann_recall=a.target_ann_recall,
        served_k=a.served_k, trainable_layers=a.trainable_layers, **learning_options(a), **extra,
    )
