"""GET /images/{ref}: the photos of the served version's listings, and nothing else (demo setting).

`image_root` (SERVICE_IMAGE_ROOT) is usually the catalog's folder, which also holds catalog.jsonl,
interactions.jsonl (shoppers' queries) and judgments. A static mount would serve all of them, so
this route answers only a reference that a listing of the LOADED version names (the `image`
and `images` columns of its listing store), with an image file suffix, resolved inside the root (no `..`, no
symlink out); every other path is 404 with the service's error body. The set of references is read
once per loaded version, on the first image request.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from service.api.state import State
from service.serving.errors import NotFound

router = APIRouter()

IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif",
               ".webp": "image/webp", ".bmp": "image/bmp"}


class ImageRefs:
    """The image references of one loaded version, as the response URLs write them (no leading /)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version: str | None = None
        self._refs: frozenset[str] = frozenset()

    def of(self, version: str, refs_of_version) -> frozenset[str]:
        with self._lock:
            if self._version != version:
                self._refs = frozenset(r.lstrip("/") for r in refs_of_version() if r)
                self._version = version
            return self._refs


def resolve_image(root: Path, ref: str, known: frozenset[str]) -> Path | None:
    """The file for `ref` when the version names it, it is an image type and it lies in `root`."""
    if ref not in known or Path(ref).suffix.lower() not in IMAGE_TYPES or "\x00" in ref:
        return None
    base = root.resolve()
    path = (base / ref).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        return None
    return path


@router.get("/images/{ref:path}", include_in_schema=False)
async def image(ref: str, request: Request, state: State) -> Response:
    root = state.settings.image_root
    lv = state.engine.current if state.engine.ready else None
    if root is None or lv is None:
        raise NotFound("image: not found")
    # read once per version, in a thread: a full scan of the listing store must not stall the loop
    known = await asyncio.to_thread(request.app.state.image_refs.of, lv.version, lv.store.image_refs)
    path = resolve_image(Path(root), ref, known)
    if path is None:
        raise NotFound("image: not found")
    return FileResponse(path, media_type=IMAGE_TYPES[path.suffix.lower()])
