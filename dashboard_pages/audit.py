"""The dashboard's audit log: every change made on the dashboard, in `dashboard_audit`.

    record(conn, action, summary, **details) -> int

is called inside the change's own transaction (so the log and the archive cannot disagree):
`action` a short name (`rename_person`, `retry_jobs`, …), `summary` what the operator was told,
as plain text, `details` ids and values as JSON. The Audit log page (`audit_log.py`) shows it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from database import queries

_ESCAPE = re.compile(r"\\(.)")


def plain(markdown: str) -> str:
    """A message written for Streamlit's Markdown (names escaped by app.md) as plain text."""
    return _ESCAPE.sub(r"\1", markdown).replace("\u2060", "")


def _jsonable(value: Any) -> Any:
    """What a change returned, for the log: a dataclass as its fields, anything else as text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_jsonable)


def record(conn: psycopg.Connection, action: str, summary: str, **details: Any) -> int:
    """Log one dashboard change in `conn`'s current transaction; return the entry's id."""
    row = conn.execute(queries.dashboard_audit_record, {
        "action": action, "summary": plain(summary), "details": Jsonb(details, dumps=_dumps)}).fetchone()
    return row[0]
