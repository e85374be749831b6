"""Errors: the newest processing_errors, filtered by type and text, each with its context; and
failed work (jobs, posts) queued again with a button (recovery.py, as `main.py retry` does)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import recovery
from dashboard_pages import app
from database import queries

st.title("Errors")
app.show_flash()


def retry_failed_of_type(conn, error_type: str) -> recovery.Retried:
    """What failed with `error_type`, queued again (named, so the audit log says what was done)."""
    return recovery.retry_failed(conn, error_type=error_type)


def retry_failed_of_chat(conn, chat_id: int) -> recovery.Retried:
    """What failed from chat `chat_id`, queued again."""
    return recovery.retry_failed(conn, chat_id=chat_id)


def retry_section() -> None:
    """What failed for good, by error type, with a button to queue it again."""
    failed = app.rows(queries.recovery_failed_summary)
    if not failed:
        return
    by_type: dict[str, dict[str, int]] = {}
    for row in failed:
        counts = by_type.setdefault(row["error_type"], {"job": 0, "post": 0})
        counts[row["kind"]] += row["failed"]
    jobs, posts = sum(c["job"] for c in by_type.values()), sum(c["post"] for c in by_type.values())
    with st.expander(f"Failed for good: {app.plural(jobs, 'job')}, {app.plural(posts, 'post')}", expanded=True):
        st.caption("Queue them again with a fresh budget of attempts (after fixing the cause, or after "
                   "an outage); the daemon picks them up by itself.")
        for error_type, counts in list(by_type.items())[:8]:
            what = ", ".join(app.plural(n, kind) for kind, n in counts.items() if n)
            if st.button(f"Retry {what} that failed with {error_type}", key=f"retry-{error_type}"):
                done = app.change(retry_failed_of_type, error_type, summary=lambda d: f"{d}.")
                app.flash(f"{done}.")
                st.rerun()
        by_chat: dict[int, int] = {}
        for row in failed:
            if row["chat_id"] is not None:
                by_chat[row["chat_id"]] = by_chat.get(row["chat_id"], 0) + row["failed"]
        for chat_id, count in list(by_chat.items())[:8]:
            if st.button(f"Retry {app.plural(count, 'failed item')} from chat {chat_id}", key=f"retry-chat-{chat_id}"):
                done = app.change(retry_failed_of_chat, chat_id, summary=lambda d: f"{d}.")
                app.flash(f"{done}.")
                st.rerun()
        if st.button(f"Retry all {app.plural(jobs + posts, 'failed item')}", key="retry-all", type="primary"):
            app.flash(f"{app.change(recovery.retry_failed, summary=lambda d: f'{d}.')}.")
            st.rerun()


retry_section()
types = app.rows(queries.dashboard_error_types)
if not types:
    st.success("No errors recorded.")
    st.stop()

counts = {t["error_type"]: t["errors"] for t in types}
left, middle, right = st.columns([3, 3, 1])
chosen = left.multiselect("Types", list(counts), format_func=lambda t: f"{t} ({counts[t]})",
                          placeholder="All types")
text = middle.text_input("Message contains", placeholder="e.g. truncated")
limit = right.selectbox("Show", [50, 200, 1000], index=0)
errors = app.rows(queries.dashboard_errors, {"types": chosen, "text": text.strip(), "limit": limit})

st.caption(f"{app.plural(len(errors), 'error')} shown, newest first "
           f"({sum(counts.values()):,} recorded in all).")
if not errors:
    st.info("No error matches this filter.")
    st.stop()

st.dataframe(pd.DataFrame([{
    "When": app.local(e["error_timestamp"]),
    "Type": e["error_type"],
    "Message": e["error_message"],
    "Job": e["job_id"],
    "Chat": (e["error_context"] or {}).get("source_chat_id"),
    "Message id": (e["error_context"] or {}).get("source_message_id"),
} for e in errors]), hide_index=True, width="stretch", column_config={
    "When": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
    "Job": st.column_config.NumberColumn(format="%d"),
    "Chat": st.column_config.NumberColumn(format="%d"),
    "Message id": st.column_config.NumberColumn(format="%d"),
})

st.subheader("Context")
for e in errors[:20]:
    # Error messages hold file names and chat titles, which strangers choose: escaped.
    with st.expander(app.md(f"{app.when(e['error_timestamp'])} · {e['error_type']} · {e['error_message'][:100]}")):
        st.code(e["error_message"], language=None, wrap_lines=True)
        context = e["error_context"] or {}
        link = app.message_link(context.get("source_chat_id"), context.get("source_message_id"))
        if link:
            st.markdown(f"[Source message]({link})")
        st.json(context | ({"job_id": e["job_id"]} if e["job_id"] else {}))
if len(errors) > 20:
    st.caption("Context is shown for the newest 20; narrow the filter to see others.")
