"""GET /ui: a page to try the API from a browser (demo; issue 18 item 7).

Plain HTML, CSS and JS shipped inside the package (service/api/static/ui/, package data), served by
the app itself, so the page works offline and with a non-editable install. The page calls the
public API only (POST /search, POST /search/image, GET /listings/{id}/similar, GET /readyz), as a
storefront would,
and shows its error bodies as they come. Each file is one route with a fixed name: nothing else
under the folder can be asked for. None of it is in the OpenAPI schema.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

from fastapi import APIRouter
from fastapi.responses import Response

from service.serving.errors import NotFound

router = APIRouter()

STATIC = "/ui/static"
ASSETS = {"ui.js": "text/javascript; charset=utf-8", "ui.css": "text/css; charset=utf-8"}
PAGE = "index.html"
# The page loads only its own files and talks only to this service.
CSP = ("default-src 'self'; img-src 'self' data: https: http:; script-src 'self'; style-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def ui_file(name: str) -> Traversable:
    """A file of the page, as the installed package holds it."""
    return files("service.api") / "static" / "ui" / name


def _read(name: str, media_type: str) -> Response:
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if name == PAGE:
        headers["Content-Security-Policy"] = CSP
    return Response(ui_file(name).read_bytes(), media_type=media_type, headers=headers)


@router.get("/ui", include_in_schema=False)
async def page() -> Response:
    return _read(PAGE, "text/html; charset=utf-8")


@router.get(STATIC + "/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"ui: no file {name[:64]!r}; the page has {', '.join(ASSETS)}")
    return _read(name, media_type)
