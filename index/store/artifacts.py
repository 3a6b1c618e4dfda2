"""Versioned artifacts: `DIR/versions/<version>/` + `DIR/current`, published atomically.

A version folder is written under `DIR/staging/`, every file fsync'ed, its manifest written last
(with the sha256 of every file), then renamed into `DIR/versions/` in one step. `DIR/current` is a
small text file naming the served version, replaced by write-temp, fsync, rename, fsync(dir): a
reader sees the old name or the new one, never a torn one. A version whose checksums fail is
refused on load.

The publish gate: a build records its verdict in the manifest (`gate.passed`, `gate.failures`).
`publish` refuses a version whose gate failed (GateRefused) unless it is forced; a forced publish
is recorded in that manifest (`gate.overrides`: when, by which command, the failures overridden),
and only such a version may be served (`admissible`). manifest.json is not among the checksummed
files (it holds their checksums), so recording an override leaves verification valid; it also
means the gate is a guard against mistakes, not against someone who may write to DIR.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from index.store.manifest import Manifest

log = logging.getLogger("index.store.artifacts")
MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ArtifactError(RuntimeError):
    """A missing, corrupt or mismatched artifact (the message names the file and the problem)."""


class GateRefused(ArtifactError):
    """A version whose publish gate failed, asked to be published or served without force."""

    def __init__(self, version: str, failures: list[str]):
        super().__init__(f"version {version} failed the publish gate: " + "; ".join(failures))
        self.version, self.failures = version, failures


def gate_failures(manifest: dict[str, Any]) -> list[str]:
    """Why the version's build held it back ([] when its gate passed, or it records no gate)."""
    gate = manifest.get("gate") or {}
    if gate.get("passed", True):
        return []
    return [str(f) for f in gate.get("failures") or ["the gate failed"]]


def admissible(manifest: dict[str, Any]) -> bool:
    """May be served: its gate passed, or a forced publish of it is recorded."""
    return not gate_failures(manifest) or bool((manifest.get("gate") or {}).get("overrides"))


def read_manifest(folder: Path) -> dict[str, Any]:
    """THE manifest reader: a version folder's manifest.json (schema in index/store/manifest.py),
    its schema version checked; ArtifactError names the file otherwise."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: unreadable manifest ({e})") from e
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(f"{path}: schema_version {data.get('schema_version')!r} is not {SCHEMA_VERSION}")
    return data


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - some file systems do not allow opening a directory
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def new_version_name(digest_hint: str = "") -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{(digest_hint or secrets.token_hex(4))[:8]}"


@dataclass
class Staged:
    """A version being written: put files in `path`, then `store.commit(staged, manifest)`."""

    version: str
    path: Path


class ArtifactStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.staging_dir = self.root / "staging"
        self.current_file = self.root / "current"

    # ------------------------------------------------------------------ reading

    def list_versions(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if (p / MANIFEST).is_file())

    def current_version(self) -> str | None:
        try:
            name = self.current_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except UnicodeDecodeError:
            raise ArtifactError(f"{self.current_file}: not UTF-8 text (it should hold a version name)") from None
        return name or None

    def verified(self, version: str | None, missing: str) -> tuple[str, dict[str, Any], Path]:
        """`version`, else the current one, checked (every checksum): -> (name, manifest, folder).
        No version and nothing current: ArtifactError(`missing`, what the caller should do)."""
        version = version or self.current_version()
        if version is None:
            raise ArtifactError(missing)
        return version, self.verify(version), self.version_dir(version)

    def version_dir(self, version: str) -> Path:
        if not VERSION_RE.match(version):
            raise ArtifactError(f"version: {version!r} is not a valid version name")
        path = self.versions_dir / version
        if not (path / MANIFEST).is_file():
            raise ArtifactError(f"{path}: no such artifact version (no {MANIFEST})")
        return path

    def manifest(self, version: str) -> dict[str, Any]:
        return read_manifest(self.version_dir(version))

    def verify(self, version: str) -> dict[str, Any]:
        """Check every file's sha256 against the manifest; -> the manifest, or ArtifactError."""
        folder = self.version_dir(version)
        manifest = self.manifest(version)
        files = manifest.get("files") or {}
        if not files:
            raise ArtifactError(f"{folder / MANIFEST}: lists no files")
        for name, expected in files.items():
            path = folder / name
            if not path.is_file():
                raise ArtifactError(f"{path}: missing (listed in the manifest)")
            got = sha256_file(path)
            if got != expected:
                raise ArtifactError(f"{path}: checksum mismatch (manifest {expected[:12]}…, file {got[:12]}…)")
        return manifest

    # ------------------------------------------------------------------ writing

    @contextmanager
    def stage(self, version: str | None = None) -> Iterator[Staged]:
        """A fresh staging folder; removed if the block raises before `commit`."""
        version = version or new_version_name()
        if not VERSION_RE.match(version):
            raise ArtifactError(f"version: {version!r} is not a valid version name")
        if (self.versions_dir / version).exists():
            raise ArtifactError(f"version {version!r} exists already")
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        path = self.staging_dir / f"{version}.{secrets.token_hex(4)}"
        path.mkdir()
        staged = Staged(version, path)
        try:
            yield staged
        finally:
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)

    def commit(self, staged: Staged, manifest: Manifest) -> Path:
        """Checksum and fsync every staged file, write the manifest (+ version, schema version,
        checksums), move into versions/."""
        files = {}
        for p in sorted(staged.path.rglob("*")):
            if p.is_file() and p.name != MANIFEST:
                _fsync_file(p)
                files[str(p.relative_to(staged.path))] = sha256_file(p)
        data = {"schema_version": SCHEMA_VERSION, "version": staged.version, **manifest.to_dict(), "files": files}
        write_atomic(staged.path / MANIFEST, json.dumps(data, indent=2, sort_keys=True).encode())
        _fsync_dir(staged.path)
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        final = self.versions_dir / staged.version
        os.rename(staged.path, final)
        _fsync_dir(self.versions_dir)
        return final

    def admit(self, version: str, *, force: bool = False, by: str, verify: bool = True) -> list[str]:
        """Verify `version` (unless not `verify`: the caller verifies when it loads) and refuse it
        (GateRefused) if its gate failed, unless `force`: then the override is logged and recorded
        in its manifest (`by` names the command). -> the failures overridden."""
        manifest = self.verify(version) if verify else self.manifest(version)
        failures = gate_failures(manifest)
        if failures and not force:
            raise GateRefused(version, failures)
        if failures:
            log.warning("FORCED past the publish gate by %s: version %s (%s)", by, version, "; ".join(failures))
            self.record_override(version, by, failures)
        return failures

    def record_override(self, version: str, by: str, failures: list[str]) -> dict[str, Any]:
        """Append {at, forced, by, failures} to the manifest's `gate.overrides` (atomic rewrite;
        `files` and every checksum stay as they were)."""
        path = self.version_dir(version) / MANIFEST
        manifest = self.manifest(version)
        gate = manifest.setdefault("gate", {"passed": False, "failures": failures})
        gate.setdefault("overrides", []).append({
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "forced": True, "by": by,
            "failures": failures,
        })
        try:
            write_atomic(path, json.dumps(manifest, indent=2, sort_keys=True).encode())
        except OSError as e:  # e.g. a replica's read-only mount: an unrecorded force is no force
            raise ArtifactError(f"{path}: cannot record the forced override ({e}); run "
                                f"`service publish {version} --force` where DIR is writable") from e
        return manifest

    def publish(self, version: str, *, force: bool = False, by: str = "service publish") -> list[str]:
        """Point `current` at `version` (verified, and gated: GateRefused unless its gate passed or
        `force`): roll forward or back. -> the gate failures a forced publish overrode."""
        failures = self.admit(version, force=force, by=by)
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.current_file, (version + "\n").encode())
        return failures

    def clean_staging(self, older_than_s: float = 3600.0) -> list[str]:
        """Remove staging folders left by killed builds (older than `older_than_s`; a younger one
        may belong to a build still writing); -> removed names."""
        if not self.staging_dir.is_dir():
            return []
        cutoff = dt.datetime.now().timestamp() - older_than_s
        doomed = [p for p in self.staging_dir.iterdir() if p.is_dir() and p.stat().st_mtime < cutoff]
        for p in doomed:
            shutil.rmtree(p, ignore_errors=True)
        return sorted(p.name for p in doomed)

    def retain(self, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions, never the current one; -> deleted names."""
        if keep < 1:
            raise ValueError(f"keep: must be >= 1, got {keep}")
        current = self.current_version()
        versions = self.list_versions()
        doomed = [v for v in versions[:-keep] if v != current]
        for v in doomed:
            shutil.rmtree(self.versions_dir / v, ignore_errors=True)
        return doomed
