"""The web app, served by the gateway itself: `/` (home), `/farmer/` (Crop Guardian, a PWA),
`/playground/` and `/admin/`, with shared assets under `/static/`.

Hand-written HTML, CSS and ES modules, no build step and nothing from a CDN: `make run` has
nothing to compile and the farmer app works on a phone with no internet. Pages call the same
public API as any client, with the user's key or sign-in token.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
# Each app is a folder with an index.html; the trailing slash matters for relative URLs.
APPS = ("farmer", "playground", "admin")

router = APIRouter(include_in_schema=False)


@router.get("/")
async def home() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})


class _Revalidated(StaticFiles):
    """Static files that the browser revalidates each time (ETag, so mostly 304s): a new version
    of Kaset is picked up at once. The farmer app's service worker keeps its own offline copy."""

    def file_response(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        response = super().file_response(*args, **kwargs)
        response.headers.setdefault("cache-control", "no-cache")
        return response


def mount(app: FastAPI) -> None:
    """Add the web app's routes and static folders. Mounted last: they never shadow the API."""
    app.include_router(router)
    app.mount("/static", _Revalidated(directory=STATIC_DIR / "shared"), name="ui-static")
    for name in APPS:
        app.mount(f"/{name}", _Revalidated(directory=STATIC_DIR / name, html=True), name=f"ui-{name}")
