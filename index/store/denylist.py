"""The deny-list: listings hidden at query time, until the next index version drops them.

`DIR/denylist.txt` holds one listing id per line (UTF-8; ids never contain line breaks, the
catalog loader strips control characters). Writers (`service deny`, `POST /admin/deny` on any
replica) read-modify-write it under an advisory lock and replace it atomically (write-temp,
fsync, rename), so none loses another's ids and a reader never sees half a file. Replicas re-read
it when its (mtime, size, inode) stamp changes.

`DenyRows` is a deny-list resolved against one version's rows. A search applies it either as an
oversample (unfiltered search for k + |denied| rows, then drop the denied ones: the fast path is
kept and the response still holds k) or, for a long list or a filtered search, as a row mask.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index.search import SearchResult
from index.store.artifacts import write_atomic

DENYLIST = "denylist.txt"
# Up to this many denied rows an unfiltered search oversamples by |denied| and drops them (cheaper
# than a 1-bit-per-row IDSelector over the whole index); beyond it, the row mask is used.
OVERSAMPLE_MAX = 1024


def denylist_path(artifacts: str | Path) -> Path:
    return Path(artifacts) / DENYLIST


def stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is replaced: (mtime_ns, size, inode); None when there is none."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def read_ids(path: Path) -> frozenset[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return frozenset()
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


def read_id_file(path: Path, option: str = "--delete-ids") -> list[str]:
    """A file of listing ids, one per line (blank lines and `#` comments skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file ({option})") from None
    return [x.strip() for x in lines if x.strip() and not x.lstrip().startswith("#")]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def update(path: Path, add: Iterable[str] = (), remove: Iterable[str] = ()) -> frozenset[str]:
    """Add and remove ids (read-modify-write under the lock, replaced atomically); -> the new list."""
    add = [str(i).strip() for i in add]
    remove = {str(i).strip() for i in remove}
    for i in add:
        if not i or any(c in i for c in "\r\n") or len(i) > 256:
            raise ValueError(f"deny-list id: {i!r} is not a listing id (empty, too long or has a line break)")
    with _locked(path):
        ids = (read_ids(path) | set(add)) - remove
        write_atomic(path, "".join(f"{i}\n" for i in sorted(ids)).encode("utf-8"))
    return frozenset(ids)


@dataclass(frozen=True)
class DenyRows:
    """A deny-list resolved to one version's rows."""

    rows: np.ndarray  # (m,) int64 sorted row positions hidden in this version
    n: int  # rows in the version

    @classmethod
    def none(cls, n: int) -> DenyRows:
        return cls(np.empty(0, np.int64), n)

    def __len__(self) -> int:
        return len(self.rows)

    def plan(self, mask: np.ndarray | None) -> tuple[np.ndarray | None, int]:
        """-> (row mask to search with, how many extra rows to ask for, then `drop`)."""
        if not len(self.rows):
            return mask, 0
        if mask is None and len(self.rows) <= OVERSAMPLE_MAX:
            return None, len(self.rows)
        allowed = np.ones(self.n, dtype=bool) if mask is None else mask.copy()
        allowed[self.rows] = False
        return allowed, 0

    def drop(self, res: SearchResult, k: int) -> SearchResult:
        """Remove denied rows from an oversampled result; keep the first k of the rest."""
        keep = (res.rows >= 0) & ~np.isin(res.rows, self.rows)  # (B, k + m)
        B = res.rows.shape[0]
        scores = np.full((B, k), -np.inf, dtype=np.float32)
        rows = np.full((B, k), -1, dtype=np.int64)
        for b in range(B):
            r, s = res.rows[b][keep[b]][:k], res.scores[b][keep[b]][:k]
            rows[b, :len(r)], scores[b, :len(s)] = r, s
        return SearchResult(scores, rows)
