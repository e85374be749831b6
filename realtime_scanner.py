"""Live updates of the watched chats: the fast path (`RealtimeScanner`).

`events.NewMessage` without a `chats=` filter (that list is resolved once); the handler checks a
watched set that is reloaded while running, so a chat added later is followed without a restart,
and the hub is never watched. It only inserts jobs: a message seen here and again by a history
sweep (history_scanner) is one job (unique (chat, message)); a message it never sees is found by
the next sweep. A basic group's migration to a supergroup comes as a raw update (NewMessage skips
service messages): the handler asks for that chat's sweep at once.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg.rows import dict_row
from telethon import events, types

from database import queries
from media_kinds import chat_id_of, classify, job_values, migration_target
from stoppable import sleep_or_stop, stopped

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from accounts import AccountRegistry
    from config import Settings

logger = logging.getLogger(__name__)


class RealtimeScanner:
    """The fast path: a job for every new media message of a watched chat, as it arrives."""

    def __init__(self, registry: AccountRegistry, pool: AsyncConnectionPool, settings: Settings, *,
                 refresh_interval: float = 5.0):
        self.registry = registry
        self.pool = pool
        self.settings = settings
        self.refresh_interval = refresh_interval
        self._watched: dict[int, set[int]] = {}   # account -> marked chat ids
        self._attached: set[int] = set()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self.received = 0
        self.on_migration: Callable[[int, int], None] | None = None   # (account, chat): sweep it now

    def attach(self) -> None:
        """Register the NewMessage handler on every held client (once each)."""
        for account_id in self.registry.account_ids():
            client = self.registry.client(account_id)
            if id(client) in self._attached:
                continue
            client.add_event_handler(functools.partial(self._on_new_message, account_id), events.NewMessage())
            # NewMessage skips service messages: a basic group's migration comes as a raw update.
            client.add_event_handler(functools.partial(self._on_service_message, account_id),
                                     events.Raw(types.UpdateNewMessage))
            self._attached.add(id(client))

    async def refresh(self) -> None:
        """Reload the watched chats (a chat added, paused or removed while running)."""
        accounts = self.registry.account_ids()
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(queries.tg_watched_chats,
                              {"account_ids": accounts, "hub_chat_id": self.settings.hub_group_id})
            rows = await cur.fetchall()
        watched: dict[int, set[int]] = {a: set() for a in accounts}
        for row in rows:
            watched[row["account_id"]].add(row["chat_id"])
        self._watched = watched

    def request_refresh(self) -> None:
        self._wake.set()

    def watches(self, account_id: int, chat_id: int) -> bool:
        return chat_id != self.settings.hub_group_id and chat_id in self._watched.get(account_id, ())

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self, stop_event: asyncio.Event | None = None) -> None:
        """Attach the handlers and keep the watched set fresh until stopped."""
        self.attach()
        while not stopped(self._stopping, stop_event):
            self._wake.clear()
            self.attach()   # clients opened again after a new login
            await self.refresh()
            await sleep_or_stop(self.refresh_interval, self._stopping, stop_event, self._wake)

    async def _on_new_message(self, account_id: int, event: Any) -> None:
        # The boundary of every update: log and carry on, never let one message stop the others.
        try:
            await self.handle(account_id, event.message)
        except Exception:
            logger.exception("account %s: a new message could not be queued; the next history "
                             "sweep of its chat picks it up", account_id)

    async def _on_service_message(self, account_id: int, update: Any) -> None:
        if isinstance(update.message, types.MessageService):
            await self._on_new_message(account_id, update)

    async def handle(self, account_id: int, message: Any) -> int | None:
        """Queue the media of one new message if its chat is watched; return the new job's id."""
        if migration_target(message) is not None and self.watches(account_id, chat_id_of(message)):
            # A watched basic group became a supergroup: its sweep reads it to the end and moves
            # the record (the new chat's messages meanwhile are found by that chat's backfill).
            if self.on_migration is not None:
                self.on_migration(account_id, chat_id_of(message))
            return None
        if not isinstance(message, types.Message):
            return None
        chat_id = chat_id_of(message)
        if not self.watches(account_id, chat_id):
            return None
        self.received += 1
        info = classify(message)
        if info is None:
            return None
        status, note = job_values(info, self.settings.max_media_bytes)
        async with self.pool.connection() as conn:
            row = await (await conn.execute(queries.tg_live_job, {
                "chat_id": chat_id, "message_id": message.id, "account_id": account_id,
                "media_key": info.media_key, "media_type": info.media_type, "mime_type": info.mime_type,
                "file_size": info.file_size, "message_date": _date(message), "status": status,
                "note": note})).fetchone()
        if row:
            logger.info("chat %s message %s: new %s (%s)", chat_id, message.id, info.media_type,
                        "skipped: too large" if status == "skipped" else "queued")
        return row[0] if row else None


def _date(message: Any) -> datetime | None:
    return getattr(message, "date", None)
