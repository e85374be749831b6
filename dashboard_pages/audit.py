"""The dashboard's audit log: every change made on the dashboard, in `dashboard_audit`.

    record(conn, action, summary, **details) -> int

is called inside the change's own transaction (so the log and the archive cannot disagree):
`action` a short name (`rename_person`, `retry_jobs`, …), `summary` what the operator was told,
as plain text, `details` ids and values as JSON. The Audit log page (`audit_log.py`) shows it.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from database import queries

_ESCAPE = re.compile(r"\\(.)")


def plain(markdown: str) -> str:
    """A message written for Streamlit's Markdown (names escaped by app.md) as plain text."""
    return _ESCAPE.sub(r"\1", markdown).replace("\u2060", "")


def record(conn: psycopg.Connection, action: str, summary: str, **details: Any) -> int:
    """Log one dashboard change in `conn`'s current transaction; return the entry's id."""
    row = conn.execute(queries.dashboard_audit_record, {
        "action": action, "summary": plain(summary), "details": Jsonb(details)}).fetchone()
    return row[0]
