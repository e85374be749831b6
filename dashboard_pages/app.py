"""What every dashboard page shares: settings, the database, formatting and Telegram links.

Settings are read once per process and the database is prepared (located, started if embedded,
migrated) once per process; both live in `st.cache_resource`. Every read is a named query of
`sql/dashboard.sql`; corrections go through persons.py (see `corrections`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
import streamlit as st
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

import config
import database
from dashboard_pages.actions import person_ids
from database import queries

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Page files, relative to dashboard.py (st.page_link and st.switch_page take these paths).
OVERVIEW_PAGE = "dashboard_pages/overview.py"
CHATS_PAGE = "dashboard_pages/chats.py"
ERRORS_PAGE = "dashboard_pages/errors.py"
GALLERY_PAGE = "dashboard_pages/gallery.py"
PERSON_PAGE = "dashboard_pages/person.py"
REVIEW_PAGE = "dashboard_pages/review.py"
SEARCH_PAGE = "dashboard_pages/search.py"
AUDIT_PAGE = "dashboard_pages/audit_log.py"

DB_WAIT = 10.0  # seconds a page waits for a database connection before saying it is unreachable


# --- settings and database ---------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def settings() -> config.Settings:
    """The settings, read once per process (a ConfigError is not cached: fix .env and reload)."""
    return config.load_settings()


@dataclass
class Database:
    server: database.Server
    prepared: database.Prepared | None  # holds the embedded server (if any) for as long as we run
    pool: ConnectionPool


def _close(db: Database) -> None:
    db.pool.close()


@st.cache_resource(show_spinner="Connecting to the database…", on_release=_close)
def _database() -> Database:
    import dashboard_role

    config_ = settings()
    if config_.embedded_database or config_.postgres_password is not None:
        prepared = database.prepare(config_)   # migrated, the role's password set
        server = prepared.server
    else:   # Docker: only the role's password here; the app migrates
        prepared, server = None, database.locate_server(config_)
    # Every page works as the dashboard's least-privilege role (dashboard_role.py), not as the
    # user that migrated.
    pool = database.sync_pool(dashboard_role.conninfo(config_, server), min_size=1, max_size=4, name="dashboard")
    try:
        pool.open(wait=True, timeout=30)
        with pool.connection() as conn:
            version = database.schema_version(conn)
    except psycopg.Error as exc:
        pool.close()
        raise database.DatabaseError(f"cannot connect to {server.location} as {dashboard_role.ROLE}: {exc} (the "
                                     "app makes the role and sets its password when it starts)") from exc
    if version < database.latest_version():
        pool.close()
        raise database.DatabaseError(f"the database is at schema version {version}, this dashboard needs "
                                     f"{database.latest_version()}: start the app (it migrates), then reload")
    logger.info("dashboard connected to %s as %s (schema version %d)", server.location, dashboard_role.ROLE, version)
    return Database(server, prepared, pool)


def connect() -> Database:
    """The database, prepared on first use; stops the page with the reason if it can't be reached."""
    try:
        return _database()
    except (database.DatabaseError, psycopg.Error) as exc:
        st.error(f"The database cannot be used: {exc}")
        st.stop()


def pool() -> ConnectionPool:
    return connect().pool


def rows(query: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rows of a named query, as dicts."""
    with pool().connection(timeout=DB_WAIT) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params or {})
        return cur.fetchall()


def one(query: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
    found = rows(query, params)
    return found[0] if found else None


def change(fn: Callable[..., T], *args: Any, summary: str | Callable[[T], str] = "") -> T:
    """Run a correction `fn(conn, *args)` (persons.py) and its audit log entry (named after
    `fn`, saying `summary` or `summary(result)`) in one transaction. A merge, move or dismissal
    (undo.SCOPES) keeps what undoing it needs in the entry, and the next flash offers the undo."""
    import undo
    from dashboard_pages import audit

    with pool().connection(timeout=DB_WAIT) as conn, conn.transaction():
        details: dict[str, Any] = {}
        if undo.undoable(fn.__name__):
            result, details["undo"] = undo.capture(conn, fn.__name__, fn, *args)
        else:
            result = fn(conn, *args)
        said = summary(result) if callable(summary) else summary
        entry = audit.record(conn, fn.__name__, said or fn.__name__, args=list(args), result=result, **details)
    st.session_state["_undo_entry"] = entry if details else None
    return result


def undo_change(entry_id: int) -> str:
    """Undo the change of audit entry `entry_id` (see undo.py), audited itself; return the
    undone change's summary (plain text), with where faces that joined since went. Raises undo.UndoRefused with the reason when it cannot be undone."""
    import undo
    from dashboard_pages import audit

    with pool().connection(timeout=DB_WAIT) as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(queries.persons_lock, {"key": undo.PERSONS_LOCK})   # one undo at a time
        cur.execute(queries.undo_entry, {"audit_id": entry_id})
        entry = cur.fetchone()
        if entry is None or "undo" not in entry["details"]:
            raise undo.UndoRefused("this change cannot be undone.")
        if entry["undone_by"] is not None:
            raise undo.UndoRefused("this change was undone already.")
        done = undo.undo(conn, entry["details"]["undo"])
        said = entry["summary"] + (f" {done['later_note']}" if done.get("later_note") else "")
        audit.record(conn, "undo", f"Undone: {said}", undoes=entry_id, **done)
    return said


def _undo_clicked(entry_id: int) -> None:
    """The Undo button's callback (it runs before the page, which shows the outcome)."""
    import undo

    try:
        st.session_state["_flash"] = f"Undone: {md(undo_change(entry_id))}"
    except undo.UndoRefused as exc:
        st.session_state["_flash_error"] = f"Not undone: {md(exc)}"
    st.session_state["_undo_entry"] = None


def undo_button(entry_id: int, where: str = "flash") -> None:
    """An Undo button for the change of audit entry `entry_id`."""
    st.button("Undo", key=f"undo_{where}_{entry_id}", icon=":material/undo:",
              on_click=_undo_clicked, args=(entry_id,))


# --- messages that survive the rerun after a change ----------------------------------------------


def flash(message: str) -> None:
    """Show `message` as a success at the top of the next run (the page reruns after a change),
    with an Undo button if the change can be undone."""
    st.session_state["_flash"] = message


def show_flash() -> None:
    error = st.session_state.pop("_flash_error", None)
    if error:
        st.error(error)
    message = st.session_state.pop("_flash", None)
    entry = st.session_state.pop("_undo_entry", None)
    if message:
        if entry is None:
            st.success(message)
            return
        said, button = st.columns([6, 1], vertical_alignment="center")
        said.success(message)
        with button:
            undo_button(entry)


# --- paging ----------------------------------------------------------------------------------
# Long lists page by keyset, not OFFSET (sql/dashboard.sql): each row's cursor_* columns say
# where the next page starts, passed back as the query's after_* parameters; a page costs the same
# wherever it is. st.session_state[key] keeps the cursors of the pages before this one, for the
# list as its params select it (other params: the first page again).


def page(query: str, params: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The rows of the page the operator is on, of a keyset-paged named query."""
    state = st.session_state.get(key)
    if not state or state["for"] != repr(sorted(params.items())):
        state = st.session_state[key] = {"for": repr(sorted(params.items())), "after": []}
    first = {name: None for name in re.findall(r"%\((after_\w+)\)s", query)}
    return rows(query, params | (state["after"][-1] if state["after"] else first))


def pager(key: str, shown: list[dict[str, Any]], per_page: int, total: int, what: str) -> None:
    """Which items of how many are shown ("21–40 of 252 faces"), and buttons to the previous
    and the next page (after `page(…, key)`)."""
    after = st.session_state[key]["after"]
    start = len(after) * per_page
    if total and shown:
        st.caption(f"{start + 1}–{start + len(shown)} of {total:,} {what}")
    more = len(shown) == per_page and start + per_page < total
    if not after and not more:
        return
    back, forward = st.columns(2)
    if after:
        back.button("Previous page", key=f"{key}_previous", on_click=after.pop)
    if more:
        cursor = {f"after_{k.removeprefix('cursor_')}": v for k, v in shown[-1].items()
                  if k.startswith("cursor_")}
        forward.button("Next page", key=f"{key}_next", on_click=after.append, args=(cursor,))


# --- formatting --------------------------------------------------------------------------------


def _zone() -> ZoneInfo:
    name = None
    try:
        name = st.context.timezone
    except Exception:  # outside a browser session (AppTest without context)
        name = None
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def when(value: datetime | None, empty: str = "—") -> str:
    """A time in the viewer's time zone, to the minute."""
    if value is None:
        return empty
    return value.astimezone(_zone()).strftime("%Y-%m-%d %H:%M")


def day(value: datetime | None, empty: str = "—") -> str:
    """A date in the viewer's time zone."""
    return value.astimezone(_zone()).strftime("%Y-%m-%d") if value is not None else empty


def local(value: datetime | None) -> datetime | None:
    """A time in the viewer's time zone, for tables."""
    return value.astimezone(_zone()) if value is not None else None


def masked_phone(phone: str | None) -> str:
    """A phone number with all but its country code start and last two digits hidden."""
    if not phone:
        return "—"
    digits = phone.strip()
    return f"{digits[:3]}…{digits[-2:]}" if len(digits) > 5 else "…"


def plural(count: int, one_word: str, many: str | None = None) -> str:
    return f"{count} {one_word if count == 1 else (many or one_word + 's')}"


def verb(count: int, one_form: str, many: str) -> str:
    """The verb form that agrees with `count` ("is"/"are", "becomes"/"become")."""
    return one_form if count == 1 else many


def person_name(label: str, hidden: bool = False) -> str:
    """A person's name as plain text (select boxes, tables); `md(...)` it where Markdown is read."""
    return f"{label} (hidden)" if hidden else label


def person_link(person_id: int, label: str, hidden: bool = False, **options: Any) -> None:
    """A link to a person's page, labelled with its name (escaped: page links read Markdown)."""
    st.page_link(PERSON_PAGE, label=md(person_name(label, hidden)),
                 query_params={"person": str(person_id)}, **options)


_MARKDOWN_INLINE = re.compile(r"([\\`*_\[\]<>~$:|])")       # emphasis, links, HTML, maths, :colour[]
_MARKDOWN_LINE_START = re.compile(r"^(\s*(?:\d+)?)([#>+.)-])", re.MULTILINE)  # headings, quotes, lists
# Streamlit's Markdown turns bare addresses in the text into links (GFM "autolink literals",
# found in the text after escapes are undone): an invisible word joiner breaks the pattern.
_AUTOLINK = re.compile(r"(?<=:)(?=//)|(?<=\bwww)(?=\.)|(?<=[\w.+-])(?=@)", re.IGNORECASE)
WORD_JOINER = "\u2060"


def md(text: object) -> str:
    """`text` shown as it is where Streamlit reads Markdown (titles, captions, alerts, labels of
    buttons, links, tabs and radio options). Chat titles come from Telegram and labels from
    whoever typed them: without this, a title like "[win](https://…)" would become a link,
    "https://…" alone too, and ":red[x]" a colour."""
    escaped = _MARKDOWN_INLINE.sub(r"\\\1", str(text))
    escaped = _MARKDOWN_LINE_START.sub(lambda m: m.group(1) + "\\" + m.group(2), escaped)
    return _AUTOLINK.sub(WORD_JOINER, escaped)


# --- Telegram links ----------------------------------------------------------------------------


def _channel_part(chat_id: int | None) -> int | None:
    """The id in t.me/c/… links of a supergroup or channel (marked id -100…); None otherwise."""
    if chat_id is None or chat_id > -1_000_000_000_000:
        return None
    return -chat_id - 1_000_000_000_000


def message_link(chat_id: int | None, message_id: int | None, username: str | None = None) -> str | None:
    """A t.me link to a message, when one exists: public chats by username, supergroups and
    channels by id (members only). Basic groups and private chats have no message links."""
    if message_id is None:
        return None
    if username:
        return f"https://t.me/{username}/{message_id}"
    channel = _channel_part(chat_id)
    return f"https://t.me/c/{channel}/{message_id}" if channel is not None else None


def topic_link(hub_chat_id: int | None, topic_id: int | None, message_id: int | None = None) -> str | None:
    """A t.me link to a forum topic of the hub (or to one message in it)."""
    channel = _channel_part(hub_chat_id)
    if channel is None or topic_id is None:
        return None
    return f"https://t.me/c/{channel}/{topic_id}" + (f"/{message_id}" if message_id else "")


def hub_of(person: dict[str, Any]) -> int | None:
    """The hub a person's topic lives in: recorded with the topic, else the configured one."""
    return person.get("hub_chat_id") or settings().hub_group_id


def source_text(chat_title: str | None, chat_id: int, message_id: int, *, markdown: bool = True) -> str:
    """Where a face was seen: as Markdown (the chat title escaped), or plain for tables."""
    chat = chat_title or chat_id
    return f"{md(chat) if markdown else chat} · message {message_id}"


def person_labels(actions: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """{person id: its label and topic title} of every person the actions name."""
    ids = person_ids(actions)
    return {r["id"]: r for r in rows(queries.dashboard_labels, {"person_ids": ids})} if ids else {}


def request_chat(identifier: str, account_id: int) -> None:
    """Ask the daemon to watch a chat: the same request `python add_chat.py` records (the
    dashboard holds no Telegram client; the daemon resolves the chat with its own)."""
    import add_chat  # the telegram side owns the request's format

    from dashboard_pages import audit

    with pool().connection(timeout=DB_WAIT) as conn, conn.transaction():
        add_chat.request_chat(conn, identifier, account_id=account_id)
        audit.record(conn, "request_chat", f"Requested the chat {identifier} (account {account_id}).",
                     chat=identifier, account_id=account_id)


# --- search by photo ---------------------------------------------------------------------------


@st.cache_resource(show_spinner="Loading the face model…")
def face_processor(engine: str):
    """The face engine that made the stored embeddings (search vectors must be comparable)."""
    from media_processor import FaceProcessor
    return FaceProcessor(engine, models_dir=settings().models_path, min_quality=0.0)


def nearest_persons(embedding, *, k: int = 50, persons: int = 5) -> list[dict[str, Any]]:
    """The persons nearest to a face embedding, best similarity first, with label and cover."""
    with pool().connection(timeout=DB_WAIT) as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(queries.dashboard_search_ef, {"ef_search": str(max(k, database.HNSW_EF_SEARCH))})
        cur.execute(queries.for_dimension("dashboard_nearest_persons", len(embedding)),
                    {"embedding": embedding, "k": k, "persons": persons})
        return cur.fetchall()
