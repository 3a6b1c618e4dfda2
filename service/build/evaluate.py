"""`service eval`: metrics of any version (published or not) against a judgments file.

The headline, `served`, is the metrics of the mode `service serve` answers in (SERVICE_SEARCH_MODE,
hybrid by default; dense for a version without a lexical index), named by `served_mode`. The
top-level metrics are the dense index's (what the gate checks); `modes` holds dense, lexical and
hybrid side by side when the version has a lexical index, with the fusion from the settings
(SERVICE_FUSION, SERVICE_RRF_K, SERVICE_DENSE_WEIGHT, ...: what `service serve` would answer with).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from index.build import load_index
from index.rank_fusion import FusionSpec
from index.search import FaissCpuSearcher
from index.store.artifacts import ArtifactStore
from index.store.listings import ListingStore
from model.data.interactions import load_judgments
from model.devices import resolve_device
from model.runtime.query_encoder import QueryEncoder
from service.build.evaluation import evaluate, evaluate_modes
from service.serving.engine import fusion_spec, load_lexical
from service.serving.settings import Settings


def evaluate_version(artifacts: Path, version: str | None, judgments: Path, *, device: str = "auto",
                     min_relevant: float | None = None, fusion: FusionSpec | None = None) -> dict[str, Any]:
    store = ArtifactStore(artifacts)
    version, manifest, folder = store.verified(version, f"{artifacts}: no current version; pass --version")
    encoder = QueryEncoder(folder / "model.safetensors", folder / "tokenizer.json", str(resolve_device(device, "--device")))
    searcher = FaissCpuSearcher(load_index(str(folder / "index.faiss")), np.load(folder / "vectors.npy", mmap_mode="r"),
                                manifest.get("index_params"))
    ids = ListingStore(folder / "listings.sqlite").ids()
    labels = load_judgments(judgments, set(ids), min_relevant=min_relevant)
    metrics = evaluate(searcher, ids, encoder.encode, labels)
    lexical = load_lexical(folder, manifest)
    settings = Settings(artifacts=artifacts)
    served_mode = settings.search_mode if lexical is not None else "dense"
    served = {k: v for k, v in metrics.items() if k != "latency"}
    if lexical is not None:
        spec = fusion or fusion_spec(settings)
        metrics["modes"] = evaluate_modes(searcher, lexical, ids, encoder.encode, labels, spec)
        served = metrics["modes"][served_mode]
    return {"version": version, "objective": manifest.get("objective"), "n_items": manifest["n_items"],
            "served_mode": served_mode, "served": served, "judgments": labels.report.to_dict(), **metrics}
