"""Lists answer {"items": [...], "next": URL or null} (CONTRACTS.md section 3), keyset-paged by id.

Every list route takes `Limit` (default 100, at most MAX_PAGE), so no request can ask the
database for an unbounded list (OWASP API4); tests/api/test_openapi_contract.py checks that
every route answering a Page declares it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query, Request
from sqlalchemy import Select
from sqlalchemy.orm import Session

MAX_PAGE = 1000
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"items per page (at most {MAX_PAGE})")]
After = Annotated[int | None, Query(ge=0, le=2**31 - 1, description="cursor from the previous page's next link")]
Code = Annotated[str, Path(min_length=1, max_length=64, description="a code, reference or id as the files give it")]


def page(session: Session, request: Request, query: Select, id_column: Any, limit: int, after: int | None,
         render: Any) -> dict[str, Any]:
    """Run `query` filtered after the cursor; render each row; build the next link from the request URL."""
    if after is not None:
        query = query.where(id_column > after)
    rows = session.execute(query.order_by(id_column).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [render(r[0] if len(r) == 1 else r) for r in rows]
    next_url = None
    if more:
        last = rows[-1][0] if len(rows[-1]) == 1 else rows[-1]
        next_url = str(request.url.include_query_params(after=getattr(last, "id", last), limit=limit))
    return {"items": items, "next": next_url}
