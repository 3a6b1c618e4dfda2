"""`service eval`: metrics of any version (published or not) against a judgments file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from index.artifacts import ArtifactError, ArtifactStore
from index.build import load_index
from index.metadata import ListingStore
from index.search import FaissCpuSearcher
from model.interactions import load_judgments
from model.query_encoder import QueryEncoder
from service.engine import resolve_encoder_device
from service.evaluation import evaluate


def evaluate_version(artifacts: Path, version: str | None, judgments: Path, *, device: str = "auto",
                     min_relevant: float | None = None) -> dict[str, Any]:
    store = ArtifactStore(artifacts)
    version = version or store.current_version()
    if version is None:
        raise ArtifactError(f"{artifacts}: no current version; pass --version")
    manifest = store.verify(version)
    folder = store.version_dir(version)
    encoder = QueryEncoder(folder / "model.safetensors", folder / "tokenizer.json", resolve_encoder_device(device))
    searcher = FaissCpuSearcher(load_index(str(folder / "index.faiss")), np.load(folder / "vectors.npy", mmap_mode="r"),
                                manifest.get("index_params"))
    ids = ListingStore(folder / "listings.sqlite").ids()
    labels = load_judgments(judgments, set(ids), min_relevant=min_relevant)
    metrics = evaluate(searcher, ids, encoder.encode, labels)
    return {"version": version, "objective": manifest.get("objective"), "n_items": manifest["n_items"],
            "judgments": labels.report.to_dict(), **metrics}
