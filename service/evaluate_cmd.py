"""`service eval`: metrics of any version (published or not) against a judgments file.

The top-level metrics are the dense index's (what the gate checks); `modes` holds dense, lexical
and hybrid side by side when the version has a lexical index, with the fusion from the settings
(SERVICE_FUSION, SERVICE_RRF_K, SERVICE_DENSE_WEIGHT, ...: what `service serve` would answer with).
"""

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
from service.engine import fusion_spec, load_lexical, resolve_encoder_device
from service.evaluation import evaluate, evaluate_modes
from service.fusion import FusionSpec
from service.settings import Settings


def evaluate_version(artifacts: Path, version: str | None, judgments: Path, *, device: str = "auto",
                     min_relevant: float | None = None, fusion: FusionSpec | None = None) -> dict[str, Any]:
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
    lexical = load_lexical(folder, manifest)
    if lexical is not None:
        spec = fusion or fusion_spec(Settings(artifacts=artifacts))
        metrics["modes"] = evaluate_modes(searcher, lexical, ids, encoder.encode, labels, spec)
    return {"version": version, "objective": manifest.get("objective"), "n_items": manifest["n_items"],
            "judgments": labels.report.to_dict(), **metrics}
