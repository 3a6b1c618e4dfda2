"""Deployment checks that run without Docker or a cluster (helpers in deploy_helpers.py).

`rendered` renders every kustomization under k8s/overlays once per session with `kubectl
kustomize` (offline, a fraction of a second each)."""

from __future__ import annotations

import pytest
from deploy_helpers import K8S, OVERLAYS, kustomize


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """overlay name ('cpu', 'gpu/pipeline', ...) -> the rendered objects."""
    return {name: kustomize(K8S / "overlays" / name) for name in OVERLAYS}
