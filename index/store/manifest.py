"""THE schema of a version's manifest.json: one dataclass that every writer fills.

`service build-index` (service/build/pipeline.py), `service index` (stages.py) and
`service update-index` (update.py) describe the model and its inputs (the first block below);
`write_version` adds what the index holds (the second); `ArtifactStore.commit` adds the version
name, the schema version and every file's sha256. Readers get the stored JSON as a dict from
`index.store.artifacts.read_manifest` (the one reader, which checks the schema version; also
`ArtifactStore.manifest(version)`).

A key the schema does not name cannot be written: `Manifest.from_dict` (copying a version)
refuses it, so the writers cannot drift apart again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Added by ArtifactStore.commit, never by a writer.
COMMIT_KEYS = ("schema_version", "version", "files")
# Written only when set (a plain build has no run, parent, update, lexical index or view vectors);
# every other key is always written, null when unknown.
OPTIONAL = frozenset({"run", "parent_version", "parent_metrics", "update", "lexical", "view_vectors", "synthetic"})


@dataclass
class Manifest:
    # --- the model and its inputs (build, stages, update)
    objective: str | None = None
    model_config: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] | None = None
    view_weights: dict[str, float] | None = None  # learned fusion weight per view type
    text_base_digest: str | None = None  # the MiniLM weights trained from
    image_backbone_digest: str | None = None  # the EfficientNet-Lite0 weights (None: no photos)
    modality_gap: dict[str, Any] | None = None
    catalog: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    run: dict[str, Any] | None = None  # `service index`: the training run and its shards
    parent_version: str | None = None  # `service update-index`: the version updated
    parent_metrics: dict[str, Any] | None = None
    update: dict[str, Any] | None = None
    # --- what the index holds (write_version)
    created: str | None = None
    model_digest: str | None = None
    n_items: int | None = None
    dim: int | None = None
    index_key: str | None = None
    index_params: dict[str, Any] | None = None
    index_tuning: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None  # {"passed", "failures"[, "overrides"]}
    lexical: dict[str, Any] | None = None  # the BM25 index beside the dense one
    view_vectors: dict[str, Any] | None = None  # per-view vectors for explain
    # --- a version a benchmark made from generated vectors (bench/make_artifact.py, bench/gpu_check.py)
    synthetic: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (an OPTIONAL key left out when None)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None or k not in OPTIONAL}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """A stored manifest as a Manifest (its commit keys dropped); an unknown key is a ValueError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - set(COMMIT_KEYS))
        if unknown:
            raise ValueError(f"manifest: unknown keys {unknown} (index/store/manifest.py is the schema)")
        return cls(**{k: v for k, v in data.items() if k in known})
