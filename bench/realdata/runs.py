"""Training runs of the real-data tables: a short spec per run, built through the ordinary pipeline.

A spec is `objective[:key=value,...]`, e.g. `ft`, `ft:epochs=2`, `clip:epochs=1,lr=1e-3`. Keys:
epochs, batch_size, trainable_layers, dim, seed (BuildOptions), any TrainConfig field (lr,
lr_encoder, cross_view_weight, transport_weight, ...: BuildOptions.train_overrides), and
negatives=1 (the bench's judged negatives file: `--negatives`, where the bench has one). The run's
name is derived from the spec, so a finished run is found again by name and skipped.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.realdata.common import show_command
from model.config import TrainConfig

BUILD_KEYS = {"epochs": int, "batch_size": int, "trainable_layers": int, "dim": int, "seed": int}
# Training settings without a BuildOptions field of their own go through train_overrides.
TRAIN_KEYS = frozenset(f.name for f in dataclasses.fields(TrainConfig)) - {"objective", "epochs", "batch_size",
                                                                           "seed", "device"}
# Input files a bench supplies, switched on by `key=1` in the spec (the path is the bench's).
INPUT_KEYS = frozenset({"negatives"})
CLI_FLAGS = {"epochs": "--epochs", "batch_size": "--batch-size", "dim": "--dim", "seed": "--seed",
             "trainable_layers": "--trainable-layers"}


@dataclass(frozen=True)
class RunSpec:
    objective: str
    build: dict[str, Any] = field(default_factory=dict)  # BuildOptions fields
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides
    inputs: dict[str, int] = field(default_factory=dict)  # INPUT_KEYS switched on (1) or off (0)

    @property
    def name(self) -> str:
        parts = [self.objective] + [f"{k}={v}" for k, v in sorted({**self.build, **self.train, **self.inputs}.items())]
        return "_".join(parts).replace("=", "").replace(".", "p").replace("-", "m")


def parse_spec(spec: str, defaults: dict[str, Any] | None = None) -> RunSpec:
    objective, _, rest = spec.partition(":")
    build: dict[str, Any] = dict(defaults or {})
    train: dict[str, Any] = {}
    inputs: dict[str, int] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key in INPUT_KEYS:
            if value not in ("0", "1"):
                raise SystemExit(f"run spec {spec!r}: {key} takes 0 or 1, got {value!r}")
            if value == "1":  # 0 is the default: the same run, the same name
                inputs[key] = 1
        elif key in BUILD_KEYS:
            build[key] = BUILD_KEYS[key](value)
        elif key in TRAIN_KEYS:
            train[key] = type(getattr(TrainConfig(), key))(value)
        else:
            raise SystemExit(f"run spec {spec!r}: unknown key {key!r} (build: {sorted(BUILD_KEYS)}; "
                             f"train: {sorted(TRAIN_KEYS)}; inputs: {sorted(INPUT_KEYS)})")
    return RunSpec(objective, build, train, inputs)


def build_run(spec: RunSpec, *, catalog: Path, artifacts: Path, interactions: Path | None,
              image_cache: Path | None = None, validation: Path | None = None,
              min_relevant: float | None = None, negatives: Path | None = None) -> dict[str, Any]:
    """Build (unpublished, exact Flat index) version `spec.name` unless it exists; -> a summary.
    `validation`: judgments scored after every epoch (early stopping when the spec sets patience),
    relevant at `min_relevant`. `negatives`: the bench's judged negatives, used when the spec has
    negatives=1 (a spec that asks for them where the bench has none is refused)."""
    if spec.inputs.get("negatives") and negatives is None:
        raise SystemExit(f"run {spec.name}: negatives=1, but this bench has no judged negatives file")
    negatives = negatives if spec.inputs.get("negatives") else None
    from index.store.artifacts import ArtifactStore
    from service.build.pipeline import build_index, build_options

    store = ArtifactStore(artifacts)
    argv = ["service", "build-index", "--catalog", catalog, "--artifacts", artifacts, "--objective", spec.objective,
            "--index-key", "Flat", "--device", "cpu", "--no-publish", "--version", spec.name, "--no-progress"]
    if interactions is not None:
        argv[4:4] = ["--interactions", interactions]
    if image_cache is not None:
        argv += ["--image-cache", image_cache]
    if validation is not None:
        argv += ["--validation-judgments", validation]
    if min_relevant is not None:
        argv += ["--min-relevant", min_relevant]
    if negatives is not None:
        argv += ["--negatives", negatives]
    for key, flag in (("patience", "--patience"), ("hard_negatives", "--hard-negatives")):
        if spec.train.get(key):
            argv += [flag, spec.train[key]]
    for key, value in spec.build.items():
        argv += [CLI_FLAGS[key], value] if key in CLI_FLAGS else []
    note = ""
    flagged = {"patience", "hard_negatives"}  # passed as CLI flags above
    if set(spec.train) - flagged:
        extra = {k: v for k, v in spec.train.items() if k not in flagged}
        note = f"plus BuildOptions {extra} (no CLI flag: run through bench/realdata/runs.py)"
    show_command(["nice", "-n", "10", *argv], note)
    if spec.name not in store.list_versions():
        build_index(build_options(
            catalog=catalog, artifacts=artifacts, interactions=interactions, objective=spec.objective,
            index_key="Flat", device="cpu", publish=False, version=spec.name, progress=False,
            image_cache=image_cache, train_overrides=dict(spec.train), validation_judgments=validation,
            min_relevant=min_relevant, negatives=negatives, **spec.build,
        ))
        gc.collect()
    manifest = store.manifest(spec.name)
    report = json.loads((store.version_dir(spec.name) / "report.json").read_text())
    history = report["training"]["history"]
    return {"name": spec.name, "objective": spec.objective, "build": spec.build, "train": spec.train,
            "version_dir": str(store.version_dir(spec.name)), "timings": manifest.get("timings"),
            "train_config": manifest.get("train_config"), "pairs": report["training"].get("pairs"),
            "items_per_s": history.get("items_per_s"), "epochs": history.get("epochs"),
            "early_stopping": history.get("early_stopping"),
            "cross_view": manifest.get("metrics", {}).get("cross_view"), "modality_gap": manifest.get("modality_gap")}
