"""`GET /`: the demo page, one self-contained HTML file shipped in the package (handler/http/static/).

The page calls `analyze` with a relative URL, so the same file works on uvicorn and under an API
Gateway stage prefix. It is read once per process; a missing file is a packaging fault (500). Each answer
carries the MAX_IMAGE_BYTES setting, so the page refuses a larger file before uploading it.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from handler.config import settings

DEMO_PAGE = Path(__file__).parent / "static" / "demo.html"
LIMIT_PLACEHOLDER = 'content="MAX_IMAGE_BYTES"'
"""Where the page reads the byte limit, so it refuses a file over it before uploading it."""

router = APIRouter()


@cache
def demo_html() -> str:
    return DEMO_PAGE.read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, tags=["demo"], summary="Demo page")
@router.head("/", include_in_schema=False)  # link checkers and monitors; GET's headers, no body
def demo_page() -> HTMLResponse:
    """A page to try the API in a browser: pick or drop an image, see the caption and scored boxes."""
    limit = settings().max_image_bytes
    return HTMLResponse(demo_html().replace(LIMIT_PLACEHOLDER, f'content="{limit}"', 1))
