"""The quality console (/console/quality): a placeholder page; the quality desk's own work replaces this file."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from api.console.web import ConsoleUser, console_user, page

router = APIRouter()
Quality = Annotated[ConsoleUser, console_user("quality")]


@router.get("/quality", response_class=HTMLResponse)
def quality_home(request: Request, user: Quality) -> HTMLResponse:
    return page(request, "quality.html", user)
