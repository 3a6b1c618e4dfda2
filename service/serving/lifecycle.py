"""Which version this replica serves and whether it takes traffic: ONE object for the initial load,
reloads (through the publish gate), following `DIR/current` and the deny-list, and readiness.

Startup loads the served version in a thread (so /healthz answers while a large index loads),
warms it, and only then is the replica `accepting` (/readyz green). `follow_current` polls
`DIR/current` (SIGHUP or POST /admin/reload wake it): the new version loads and warms beside the old
one and is swapped in atomically; if it fails, the old one keeps serving and the failure is kept for
/readyz. `stop()` turns readiness off before the batcher drains. No HTTP here: service/api reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from index.store.artifacts import ArtifactStore
from service.serving.engine import Engine, LoadedVersion, artifacts_current
from service.serving.metrics import Metrics
from service.serving.settings import Settings

log = logging.getLogger(__name__)


class Lifecycle:
    def __init__(self, settings: Settings, engine: Engine, metrics: Metrics) -> None:
        self.settings, self.engine, self.metrics = settings, engine, metrics
        self.warmed = False
        self.shutting_down = False
        self.load_error: str | None = None  # why nothing is served yet (shown by /readyz)
        self.follow_error: str | None = None  # the last poll of DIR/current failed (shown by /readyz while serving)

    @property
    def accepting(self) -> bool:
        """A version is loaded and warmed and the replica is not shutting down."""
        return self.warmed and not self.shutting_down and self.engine.ready

    def not_ready_reason(self) -> str:
        return "shutting down" if self.shutting_down else (self.load_error or "loading")

    def reload(self, version: str | None = None) -> LoadedVersion:
        """Load (beside the served one), warm and swap; the metric counts every outcome."""
        try:
            lv = self.engine.load(version)
        except Exception:
            self.metrics.reloads.labels("failed").inc()
            raise
        self.metrics.reloads.labels("ok").inc()
        self.metrics.set_served(lv.model_version, lv.version, lv.encoder.describe, lv.searcher.placement, lv.n_items)
        self.warmed = True
        self.load_error = None
        self.metrics.ready.set(1)
        return lv

    def gated_reload(self, version: str | None, force: bool, by: str) -> LoadedVersion:
        """Load `version` (default: the pinned one, else DIR/current) through the publish gate: a named
        version whose gate failed is refused (GateRefused) unless `force`, which is logged and recorded
        in its manifest as done `by`; without a name, the engine admits only what passed or was forced
        before."""
        if version is not None or force:
            store = ArtifactStore(self.settings.artifacts)
            target = version or self.settings.version or store.current_version()
            try:
                if target is not None:
                    store.admit(target, force=force, by=by, verify=False)  # the load verifies
            except Exception as e:  # counted and shown as any failed reload is (engine.load)
                self.engine.last_reload_error = f"{type(e).__name__}: {e}"
                self.metrics.reloads.labels("failed").inc()
                raise
        return self.reload(version)

    async def follow_current(self, wake: asyncio.Event) -> None:
        """Initial load (retried until it works), then follow DIR/current."""
        settings = self.settings
        while not self.shutting_down:
            served = self.engine.current.version if self.engine.ready else None
            try:
                target = settings.version or await asyncio.to_thread(artifacts_current, settings)
                if target is not None and target != served:
                    await asyncio.to_thread(self.reload, target)
                elif target is None and not self.engine.ready:
                    self.load_error = f"no version published in {settings.artifacts}"
                if target is None and served is not None:  # current deleted or emptied under a serving replica
                    if self.follow_error is None:
                        log.error("%s/current names no version (missing or empty); still serving %s",
                                  settings.artifacts, served)
                    self.follow_error = f"{settings.artifacts}/current names no version (missing or empty)"
                else:
                    self.follow_error = None
            except Exception as e:  # noqa: BLE001 - keep serving the old version; report the failure
                self.load_error = self.follow_error = f"{type(e).__name__}: {e}"
                log.error("loading version failed: %s", self.load_error)
            interval = settings.reload_poll_s if settings.reload_poll_s > 0 else (1.0 if not self.engine.ready else None)
            with contextlib.suppress(TimeoutError):
                if interval is None:
                    await wake.wait()
                else:
                    await asyncio.wait_for(wake.wait(), interval)
            wake.clear()

    async def follow_denylist(self) -> None:
        """Re-read DIR/denylist.txt every `denylist_poll_s` (a stat when unchanged), so a listing denied
        on any replica or by `service deny` disappears from every replica within seconds."""
        while not self.shutting_down and self.settings.denylist_poll_s > 0:
            try:
                await asyncio.to_thread(self.engine.refresh_denylist)
            except Exception as e:  # noqa: BLE001 - keep the last good list; retry next round
                log.error("reading the deny-list failed: %s: %s", type(e).__name__, e)
            await asyncio.sleep(self.settings.denylist_poll_s)

    def stop(self) -> None:
        """Readiness off (first thing at shutdown, before the drain); the followers end."""
        self.shutting_down = True
        self.metrics.ready.set(0)
