"""The gateway's landing page at `/`. The full web app (farmer app, playground, admin
console) is its own piece of work; until then this page points people to what exists."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from kaset import __version__

router = APIRouter(include_in_schema=False)

_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Kaset</title>
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;line-height:1.5}}
a{{display:block;padding:.6rem 0;font-size:1.1rem}}</style></head>
<body><h1>Kaset · เกษตร</h1>
<p>Self-hosted AI services: speech, text, translation, embeddings, and Crop Guardian for farmers.
Version {__version__}.</p>
<a href="/docs">API reference and try-it console (/docs)</a>
<a href="/health/ready">Readiness: which models are loaded (/health/ready)</a>
<a href="/metrics">Metrics for Prometheus (/metrics)</a>
<p>Every <code>/v1</code> call needs <code>Authorization: Bearer &lt;key&gt;</code>; the first start printed an
admin key in the server's console.</p>
</body></html>"""


@router.get("/", response_class=HTMLResponse)
async def landing() -> HTMLResponse:
    return HTMLResponse(_PAGE)
