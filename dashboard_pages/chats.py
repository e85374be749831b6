"""Chats: every watched chat per account with its progress; pause, resume, and add chats."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import recovery
from commands import python_command
from dashboard_pages import app
from database import queries

st.title("Chats")
app.show_flash()
chats = app.rows(queries.dashboard_chats)
imported = app.rows(queries.dashboard_imported_chats)


def chat_name(c: dict) -> str:
    name = c["chat_title"] or str(c["chat_id"])
    return f"{name} (@{c['chat_username']})" if c["chat_username"] else name


def set_chat_state(conn, checkpoint_id: int, state: str) -> bool:
    """Pause or resume a watched chat; whether it changed."""
    return conn.execute(queries.dashboard_set_chat_state,
                        {"checkpoint_id": checkpoint_id, "state": state}).fetchone() is not None


def stop_watching(conn, chat_id: int, account_id: int) -> str:
    """`main.py remove-chat CHAT --account ID` (recovery.py), keeping the chat's data; what it did."""
    return str(recovery.remove_chat(conn, chat_id, account_id=account_id))


if not chats:
    st.info(("No chat is watched through Telegram yet" + (" (the imported ones are below)" if imported else "")
             + f". Add one below (or with `{python_command()} add_chat.py`)."))
else:
    st.dataframe(pd.DataFrame([{
        "Chat": chat_name(c),
        "Account": c["account"] or "—",
        "Type": c["chat_type"] or "",
        "Mode": c["scan_mode"],
        "State": c["state"] + (f" (deferred until {app.when(c['deferred_until'])})"
                               if c["deferred_until"] else ""),
        "Progress": (min(1.0, c["processed_messages"] / c["total_messages"])
                     if c["total_messages"] else None),
        "Messages": f"{c['processed_messages']:,} / {c['total_messages']:,}",
        "Last update": app.local(c["last_updated"]),
        "Skipped media": c["skipped_media"],
        "Jobs waiting": c["waiting"],
        "Jobs failed": c["failed"],
        "Last error": c["last_error"] or "",
    } for c in chats]), hide_index=True, width="stretch", column_config={
        "Progress": st.column_config.ProgressColumn(
            "Progress", help="Messages of the history read so far (backfill)",
            min_value=0.0, max_value=1.0, format="percent"),
        "Last update": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
    })

    st.subheader("Pause or resume")
    by_id = {c["id"]: c for c in chats}
    chosen = st.selectbox(
        "Chat", list(by_id), key="pause_chat",
        format_func=lambda i: f"{chat_name(by_id[i])} · {by_id[i]['account'] or '—'} · {by_id[i]['state']}")
    chat = by_id[chosen]
    pausing = chat["state"] == "active"
    st.caption("A paused chat is not read until it is resumed; media already queued are still "
               "analysed. Nothing changes on Telegram." if pausing else
               "Resuming reads the chat again from where it stopped. Nothing changes on Telegram.")
    if st.button("Pause" if pausing else "Resume", key="pause_resume"):
        said = f"{'Paused' if pausing else 'Resumed'} {app.md(chat_name(chat))}."
        changed = app.change(set_chat_state, chosen, "paused" if pausing else "active", summary=said)
        if changed:
            app.flash(said)
        st.rerun()

    watched = [i for i, c in by_id.items() if c["state"] != "removed"]
    if watched:
        st.subheader("Stop watching")
        gone = st.selectbox(
            "Chat", watched, key="remove_chat",
            format_func=lambda i: f"{chat_name(by_id[i])} · {by_id[i]['account'] or '—'}")
        st.caption("The chat is no longer read by this account, and its media not analysed yet are "
                   "skipped. What it brought stays: persons, faces, posts. To forget its data as well: "
                   f"`{python_command()} main.py remove-chat {by_id[gone]['chat_id']} --drop-data --yes`. "
                   "Resuming it above reads it again. Nothing changes on Telegram.")
        sure = st.checkbox("I want to stop watching this chat", key="remove_chat_confirm")
        if st.button("Stop watching", key="remove_chat_go", disabled=not sure):
            chat = by_id[gone]
            said = f"Stopped watching {app.md(chat_name(chat))}"
            removed = app.change(stop_watching, chat["chat_id"], chat["account_id"],
                                 summary=lambda r: f"{said}: {r}.")
            if removed is not None:
                app.flash(f"{said}: {removed}.")
            st.rerun()

# --- imported from exports ---------------------------------------------------------------------
if imported:
    st.subheader("Imported")
    st.caption(f"Chats read from Telegram Desktop exports (`{python_command()} main.py import`), "
               "by the name the export gives them. Importing again adds only what is new.")
    st.dataframe(pd.DataFrame([{
        "Chat": c["chat_title"] or str(c["chat_id"]),
        "Source": "imported" + (" (also watched)" if c["watched"] else ""),
        "Messages": c["messages"],
        "Photos and videos": c["media"],
        "Analysed": c["done"],
        "Jobs waiting": c["waiting"],
        "Jobs failed": c["failed"],
        "Last import": app.local(c["last_imported_at"]),
    } for c in imported]), hide_index=True, width="stretch", column_config={
        "Last import": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
    })

# --- add a chat --------------------------------------------------------------------------------
st.subheader("Add a chat")
accounts = app.rows(queries.dashboard_accounts)
if not accounts:
    st.info(f"Log a Telegram account in first (`{python_command()} init_account.py`): a chat is read by an account.")
else:
    with st.form("add_chat", clear_on_submit=True):
        identifier = st.text_input("Chat", placeholder="@username, https://t.me/… link, or marked id (-100…)")
        account_id = st.selectbox(
            "Read with account", [a["id"] for a in accounts],
            format_func=lambda i: next(a["display_name"] or a["username"] or f"account {a['id']}"
                                       for a in accounts if a["id"] == i))
        st.caption("The daemon resolves the chat with this account's client and then reads its "
                   "whole history; nothing is posted to the chat.")
        submitted = st.form_submit_button("Add chat")
    if submitted:
        if not identifier.strip():
            st.error("Enter the chat's @username, link or id.")
        else:
            try:
                app.request_chat(identifier.strip(), account_id)
            except ValueError as exc:
                st.error(app.md(exc))
            else:
                app.flash(f"Requested {app.md(identifier.strip())}: the daemon adds it at its next check.")
                st.rerun()

requests = app.rows(queries.dashboard_chat_requests)
if requests:
    st.caption("Requested, not added yet:")
    st.dataframe(pd.DataFrame([{
        "Requested": app.local(r["created_at"]),
        "Chat": r["payload"].get("chat") or r["payload"].get("chat_identifier") or str(r["payload"]),
        "State": r["status"],
        "Error": r["error"] or "",
    } for r in requests]), hide_index=True, width="stretch")
