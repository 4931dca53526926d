"""``GET /v1/predictions``: the prediction log as JSONL, for the next fine-tune.

``kubetune predictions export`` (:mod:`kubetune.predictions_export`) reads it from every serving
pod through the apiserver's pod proxy. Query parameters:

- ``minScore`` (1-5, optional): only requests whose feedback scored at least this; without it,
  every logged request whose text was stored, scored or not;
- ``since`` (optional): a duration (``30m``, ``12h``, ``7d``, ``2w``) or an RFC 3339 time;
- ``limit`` (optional, default and maximum 100,000 lines, newest first).

One line per request::

    {"requestId", "time" (RFC 3339), "version", "digest", "route", "messages": [...],
     "response", "score": int | null, "comment": str | null}

Only rows whose text was stored (``logging.content`` full or redacted; redacted text is what
was stored, never the original). The read runs in a worker thread on its own read-only
connection: SQLite's WAL lets it read while the writer writes. Predictions still queued for
the writer (at most a second's worth) are not in it yet.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import sqlite3
from pathlib import Path
from typing import Any, Final

from aiohttp import web

MAX_LINES: Final = 100_000
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ExportQueryError(ValueError):
    """A query parameter is wrong; the message names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def parse_query(query: dict[str, str], now: float) -> tuple[int | None, float | None, int]:
    """(minScore, since as Unix time, limit) from the query string."""
    min_score: int | None = None
    if query.get("minScore"):
        try:
            min_score = int(query["minScore"])
        except ValueError:
            min_score = 0
        if not 1 <= min_score <= 5:
            raise ExportQueryError("minScore", "minScore: an integer from 1 to 5")
    since: float | None = None
    if query.get("since"):
        text = query["since"]
        match = _DURATION.match(text)
        if match:
            since = now - float(match.group(1)) * _SECONDS[match.group(2)]
        else:
            try:
                since = dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise ExportQueryError(
                    "since", "since: a duration such as 7d or 12h, or an RFC 3339 time") from None
    limit = MAX_LINES
    if query.get("limit"):
        try:
            limit = int(query["limit"])
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LINES:
            raise ExportQueryError("limit", f"limit: an integer from 1 to {MAX_LINES}")
    return min_score, since, limit


def read_lines(db_path: Path, min_score: int | None, since: float | None, limit: int) -> list[str]:
    """The JSONL lines, newest first."""
    if not db_path.exists():
        return []
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, check_same_thread=False)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        sql = (
            "SELECT p.request_id, p.time, p.version, p.digest, p.route, p.prompt, p.response, "
            "f.score, f.comment FROM predictions p LEFT JOIN feedback f ON f.request_id = p.request_id "
            "WHERE p.prompt IS NOT NULL AND p.response IS NOT NULL AND p.error IS NULL"
        )
        params: list[Any] = []
        if since is not None:
            sql += " AND p.time >= ?"
            params.append(since)
        if min_score is not None:
            sql += " AND f.score >= ?"
            params.append(min_score)
        sql += " ORDER BY p.time DESC LIMIT ?"
        params.append(limit)
        lines = []
        for rid, t, version, digest, route, prompt, response, score, comment in db.execute(sql, params):
            try:
                messages = json.loads(prompt)
            except ValueError:
                continue  # a prompt cut at the stored-length limit is no longer JSON
            lines.append(json.dumps({
                "requestId": rid,
                "time": dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z"),
                "version": version,
                "digest": digest,
                "route": route,
                "messages": messages,
                "response": response,
                "score": score,
                "comment": comment,
            }, ensure_ascii=False))
        return lines
    finally:
        db.close()


async def export_predictions(request: web.Request, db_path: Path) -> web.StreamResponse:
    """Stream the selected predictions as JSONL."""
    import time

    min_score, since, limit = parse_query(dict(request.query), time.time())
    lines = await asyncio.get_running_loop().run_in_executor(None, read_lines, db_path, min_score, since, limit)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    for start in range(0, len(lines), 500):
        await response.write(("\n".join(lines[start:start + 500]) + "\n").encode())
    await response.write_eof()
    return response
