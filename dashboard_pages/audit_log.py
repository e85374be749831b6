"""Audit log: every change made on the dashboard, newest first (dashboard_audit, audit.py), and
an Undo for the newest merges, moves and dismissals (undo.py)."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from dashboard_pages import app
from database import queries

SHOWN = 200
UNDO_SHOWN = 10

st.title("Audit log")
app.show_flash()
total = app.one(queries.dashboard_audit_total)["count"]
if not total:
    st.info("No change has been made on the dashboard yet. Every rename, merge, move, cover, "
            "hide, review decision, chat pause and request is listed here as it is made.")
    st.stop()
entries = app.rows(queries.dashboard_audit_recent, {"limit": SHOWN})
st.caption(f"The newest {len(entries)} of {total:,} changes." if total > len(entries)
           else f"{app.plural(total, 'change')}, newest first.")
# The newest changes that can still be undone (merges, moves, dismissals, review answers), each
# with its Undo: undoing an older one is refused while a later change touched the same faces.
undoable = {r["id"] for r in app.rows(queries.undo_undoable, {"audit_ids": [e["id"] for e in entries]})}
offered = [e for e in entries if e["id"] in undoable][:UNDO_SHOWN]
if offered:
    st.subheader("Undo")
    for e in offered:
        said, button = st.columns([6, 1], vertical_alignment="center")
        said.markdown(f"{app.when(e['at'])} · {app.md(e['summary'])}")
        with button:
            app.undo_button(e["id"], where="audit")
    st.subheader("Every change")
st.dataframe(pd.DataFrame([{
    "When": app.local(e["at"]),
    "Change": e["summary"],           # plain text in a table: nothing in it is rendered
    "Action": e["action"],
    "Details": json.dumps(e["details"], ensure_ascii=False),
} for e in entries]), hide_index=True, width="stretch", column_config={
    "When": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
})
