"""Audit log: every change made on the dashboard, newest first (dashboard_audit, audit.py)."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from dashboard_pages import app
from database import queries

SHOWN = 200

st.title("Audit log")
total = app.one(queries.dashboard_audit_total)["count"]
if not total:
    st.info("No change has been made on the dashboard yet. Every rename, merge, move, cover, "
            "hide, review decision, chat pause and request is listed here as it is made.")
    st.stop()
entries = app.rows(queries.dashboard_audit_recent, {"limit": SHOWN})
st.caption(f"The newest {len(entries)} of {total:,} changes." if total > len(entries)
           else f"{app.plural(total, 'change')}, newest first.")
st.dataframe(pd.DataFrame([{
    "When": app.local(e["at"]),
    "Change": e["summary"],           # plain text in a table: nothing in it is rendered
    "Action": e["action"],
    "Details": json.dumps(e["details"], ensure_ascii=False),
} for e in entries]), hide_index=True, width="stretch", column_config={
    "When": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
})
