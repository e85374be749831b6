"""History sweeps of the watched chats: the source of truth (`MessageScanner`).

- For every (account, chat), `iter_messages(chat, min_id=cursor, reverse=True)` oldest to newest.
  Every batch commits its jobs and the cursor (`last_processed_message_id`) in one statement, so
  after any interruption the next sweep starts exactly after the last committed message and
  nothing is missed or inserted twice. The first sweep is the backfill (progress in
  processed_messages / total_messages); once a sweep reaches the newest message the chat is
  `realtime`, and it is swept again every SWEEP_INTERVAL_SECONDS and whenever its account's
  client reconnects (Telethon's own reconnects included, accounts.watch_reconnects). Chats of
  one account are swept one at a time, a turn of at most `turn_messages` each, round robin, so
  one huge backfill does not starve the other chats.
- A watched basic group that becomes a supergroup ends with `MessageActionChatMigrateTo`: its
  sweep reads it to that message, then the record moves to the new chat (chat id, type, cursor
  0: the supergroup's own history is read from its start); the old part's jobs keep the old
  chat's id. The live handler (realtime_scanner) sees the migration too and asks for that sweep
  at once.
- What becomes a job, and with which media key and status: media_kinds.
- A long flood wait pauses the account (flood_waits.record_flood_wait) and defers the chat; the
  other accounts go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row
from telethon import errors, types

from database import queries
from flood_waits import flood_wait_left, record_flood_wait
from media_kinds import classify, job_values, migration_target
from stoppable import sleep_or_stop, stopped
from telegram_errors import FLOOD_WAITS

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from accounts import AccountRegistry
    from config import Settings

logger = logging.getLogger(__name__)

# An error Telegram gave for one chat: the chat waits this long before it is read again.
CHAT_ERROR_DEFER = 15 * 60.0
# The account can no longer read the chat (left, banned, chat deleted): the operator must act.
CHAT_GONE_DEFER = 6 * 3600.0
CHAT_GONE = (errors.ChannelPrivateError, errors.ChatForbiddenError, errors.ChannelInvalidError,
             errors.ChatIdInvalidError, errors.PeerIdInvalidError, errors.UserBannedInChannelError)


@dataclass
class SweepResult:
    """What one sweep (or one turn of a sweep) did."""

    messages: int = 0
    new_jobs: int = 0
    cursor: int = 0
    reached_newest: bool = False
    stopped_because: str | None = None   # set when the sweep ended early (error, flood, paused)
    migrated_to: int | None = None       # a basic group's end: the supergroup it became


class _Batch:
    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.messages = 0
        self.cursor = 0
        self.migrated_to: int | None = None

    def add(self, message: Any, max_bytes: int) -> None:
        self.messages += 1
        self.cursor = max(self.cursor, message.id)
        if not isinstance(message, types.Message):
            self.migrated_to = migration_target(message) or self.migrated_to
            return
        info = classify(message)
        if info is None:
            return
        status, note = job_values(info, max_bytes)
        self.rows.append((message.id, info.media_key, info.media_type, info.mime_type,
                          info.file_size, message.date, status, note))


class MessageScanner:
    """History sweeps of the watched chats of the accounts this process holds."""

    def __init__(self, registry: AccountRegistry, pool: AsyncConnectionPool, settings: Settings, *,
                 batch_size: int = 100, turn_messages: int = 2000, poll_interval: float = 2.0,
                 interval: float | None = None, page_wait: float = 1.0):
        self.registry = registry
        self.pool = pool
        self.settings = settings
        self.batch_size = batch_size
        self.turn_messages = turn_messages
        self.poll_interval = poll_interval
        self.page_wait = page_wait   # seconds between pages of 100 messages (iter_messages' wait_time)
        self.interval = float(interval if interval is not None else settings.sweep_interval_seconds)
        # (account, chat) -> (monotonic time of the next sweep, client generation it last saw)
        self._next: dict[tuple[int, int], tuple[float, int]] = {}
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self.on_migration: Callable[[], None] | None = None   # a watched chat moved (live handler)

    def request_sweep(self, account_id: int | None = None, chat_id: int | None = None) -> None:
        """Sweep now (a chat just added, an operator's request): of one chat, one account, or all."""
        for key in list(self._next):
            if (account_id is None or key[0] == account_id) and (chat_id is None or key[1] == chat_id):
                del self._next[key]
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self, stop_event: asyncio.Event | None = None) -> None:
        """Sweep due chats, one task per account, until stopped."""
        async with asyncio.TaskGroup() as tg:
            for account_id in self.registry.account_ids():
                tg.create_task(self._account_loop(account_id, stop_event), name=f"sweeps-{account_id}")

    async def _account_loop(self, account_id: int, stop_event: asyncio.Event | None) -> None:
        while not stopped(self._stopping, stop_event):
            self._wake.clear()
            swept = await self.sweep_due(account_id, stop_event)
            if stopped(self._stopping, stop_event):
                return
            if not swept:
                wait = await flood_wait_left(self.pool, account_id)
                await sleep_or_stop(max(self.poll_interval, min(wait, 60.0)) if wait else self.poll_interval,
                                    self._stopping, stop_event, self._wake)

    async def due_chats(self, account_id: int) -> list[dict[str, Any]]:
        """The chats of `account_id` to sweep now, those waiting longest first."""
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(queries.tg_watched_chats, {
                "account_ids": [account_id], "hub_chat_id": self.settings.hub_group_id})
            chats = await cur.fetchall()
        now = time.monotonic()
        generation = self.registry.generation(account_id)
        due = []
        for chat in chats:
            if chat["deferred"]:
                continue
            next_at, seen_generation = self._next.get((account_id, chat["chat_id"]), (0.0, 0))
            if next_at <= now or seen_generation != generation:
                due.append((next_at, chat))
        return [chat for _, chat in sorted(due, key=lambda pair: pair[0])]

    async def sweep_due(self, account_id: int, stop_event: asyncio.Event | None = None) -> int:
        """One round over the due chats of one account; returns how many were swept."""
        if not self.registry.is_connected(account_id) or await flood_wait_left(self.pool, account_id) > 0:
            return 0
        swept = 0
        for chat in await self.due_chats(account_id):
            if stopped(self._stopping, stop_event):
                break
            result = await self.sweep_chat(account_id, chat["chat_id"], max_messages=self.turn_messages)
            swept += 1
            if result.stopped_because in ("flood wait", "offline", "account"):
                break   # the whole account waits
        return swept

    async def sweep_chat(self, account_id: int, chat_id: int, *, max_messages: int | None = None) -> SweepResult:
        """Read chat `chat_id` with account `account_id`'s client from its cursor onwards.

        Commits every `batch_size` messages (jobs and cursor together). Stops after
        `max_messages` (the chat stays due) or at the newest message (the chat is then realtime).
        Telegram errors are handled here (recorded on the chat or the account); database errors
        propagate.
        """
        chat = await self._checkpoint(account_id, chat_id)
        result = SweepResult(cursor=chat["last_processed_message_id"] if chat else 0)
        if chat is None or chat["state"] != "active":
            result.stopped_because = "not watched"
            return result
        if not self.registry.holds(account_id):   # logged out (by another component) since it was due
            result.stopped_because = "account"
            return result
        generation = self.registry.generation(account_id)
        client = self.registry.client(account_id)
        batch = _Batch()
        iterator = None
        try:
            entity = await resolve_input_entity(client, chat_id)
            iterator = client.iter_messages(entity, min_id=result.cursor, reverse=True, wait_time=self.page_wait)
            result.reached_newest = True
            async for message in iterator:
                batch.add(message, self.settings.max_media_bytes)
                if batch.messages >= self.batch_size:
                    if not await self._commit(chat, batch, iterator, result):
                        break
                    batch = _Batch()
                if max_messages is not None and result.messages + batch.messages >= max_messages:
                    result.reached_newest = False
                    break
        except FLOOD_WAITS as exc:
            result.reached_newest = False
            await self._commit(chat, batch, iterator, result)
            wait = await record_flood_wait(self.pool, account_id, exc.seconds, f"reading chat {chat_id}")
            await self._defer(chat, wait, f"flood wait of {exc.seconds} s on account {account_id}; "
                                          f"reading resumes from message {result.cursor}")
            result.stopped_because = "flood wait"
            return result
        except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
            result.reached_newest = False
            await self._commit(chat, batch, iterator, result)
            logger.warning("account %s went offline while reading chat %s (%s); it resumes from "
                           "message %s when the client reconnects", account_id, chat_id, exc, result.cursor)
            result.stopped_because = "offline"
            return result
        except CHAT_GONE as exc:
            result.reached_newest = False
            await self._commit(chat, batch, iterator, result)
            await self._defer(chat, CHAT_GONE_DEFER,
                              f"the account cannot read this chat any more ({type(exc).__name__}): was it "
                              f"removed from it? Add it again, or remove the chat")
            result.stopped_because = type(exc).__name__
            return result
        except psycopg.Error:
            raise   # the database's problems are the supervisor's (it restarts the component)
        except Exception as exc:
            result.reached_newest = False
            if await self.registry.account_problem(account_id, exc):
                # Logged out, banned or frozen: the account is marked and its chats wait for it
                # (the cursor keeps what was read); nothing is deferred or counted.
                await self._commit(chat, batch, iterator, result)
                result.stopped_because = "account"
                return result
            # This chat waits; the other chats and the daemon go on. Telegram's refusals and
            # ValueError (Telethon cannot resolve the chat: no access hash known for this account)
            # are expected; anything else Telethon raises (TypeError, an unknown error class) is
            # logged with its traceback.
            if isinstance(exc, (errors.RPCError, ValueError)):
                logger.warning("chat %s (account %s): %s; trying again in %.0f min", chat_id, account_id,
                               exc, CHAT_ERROR_DEFER / 60)
            else:
                logger.exception("chat %s (account %s): unexpected error while reading it; trying again "
                                 "in %.0f min", chat_id, account_id, CHAT_ERROR_DEFER / 60)
            result.reached_newest = False
            await self._commit(chat, batch, iterator, result)
            await self._defer(chat, CHAT_ERROR_DEFER, f"{type(exc).__name__}: {exc}")
            result.stopped_because = type(exc).__name__
            return result
        if result.stopped_because is not None or not await self._commit(chat, batch, iterator, result):
            return result   # the chat was paused or removed meanwhile
        await self._finish_turn(chat, result, generation)
        if result.reached_newest and result.migrated_to is not None:
            await self._follow_migration(chat, result.migrated_to)
        return result

    async def _follow_migration(self, chat: dict[str, Any], new_chat_id: int) -> None:
        """The basic group, read to its end, became a supergroup: watch that instead, from its
        first message (the old part's jobs stay as they are: nothing lost, nothing twice)."""
        async with self.pool.connection() as conn:
            moved = await (await conn.execute(queries.tg_move_migrated_chat, {
                "checkpoint_id": chat["id"], "new_chat_id": new_chat_id})).fetchone()
            if moved is None:
                await conn.execute(queries.tg_retire_migrated_chat, {
                    "checkpoint_id": chat["id"],
                    "note": f"became the supergroup {new_chat_id}, which this account watches already"})
        logger.info("chat %s (%s) became the supergroup %s; following it there", chat["chat_id"],
                    chat["chat_title"], new_chat_id)
        self._next.pop((chat["account_id"], chat["chat_id"]), None)
        self.request_sweep(chat["account_id"], new_chat_id)
        if self.on_migration is not None:
            self.on_migration()

    async def _checkpoint(self, account_id: int, chat_id: int) -> dict[str, Any] | None:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(queries.tg_checkpoint, {"account_id": account_id, "chat_id": chat_id})
            return await cur.fetchone()

    async def _commit(self, chat: dict[str, Any], batch: _Batch, iterator: Any, result: SweepResult) -> bool:
        """Store one batch (jobs + cursor, atomically). False if the chat is no longer active."""
        if batch.messages == 0:
            return True
        rows = list(zip(*batch.rows)) if batch.rows else [()] * 8
        total = getattr(iterator, "total", None)
        async with self.pool.connection() as conn:
            row = await (await conn.execute(queries.tg_sweep_batch, {
                "checkpoint_id": chat["id"], "account_id": chat["account_id"], "chat_id": chat["chat_id"],
                "cursor": batch.cursor, "messages": batch.messages, "total": total,
                "message_ids": list(rows[0]), "media_keys": list(rows[1]), "media_types": list(rows[2]),
                "mime_types": list(rows[3]), "file_sizes": list(rows[4]), "message_dates": list(rows[5]),
                "statuses": list(rows[6]), "notes": list(rows[7]),
            })).fetchone()
        result.messages += batch.messages
        result.cursor = max(result.cursor, batch.cursor)
        result.migrated_to = batch.migrated_to or result.migrated_to
        result.new_jobs += row[1] if row else 0
        if row is None or row[0] != "active":
            result.reached_newest = False
            result.stopped_because = "not watched"
            return False
        return True

    async def _defer(self, chat: dict[str, Any], seconds: float, error: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(queries.tg_defer_chat,
                               {"checkpoint_id": chat["id"], "seconds": seconds, "error": error})

    async def _finish_turn(self, chat: dict[str, Any], result: SweepResult, generation: int) -> None:
        key = (chat["account_id"], chat["chat_id"])
        async with self.pool.connection() as conn:
            if result.reached_newest:
                await conn.execute(queries.tg_sweep_finished, {"checkpoint_id": chat["id"]})
                self._next[key] = (time.monotonic() + self.interval, generation)
                if chat["scan_mode"] == "backfill":
                    logger.info("chat %s (%s): backfill complete at message %s; following it live",
                                chat["chat_id"], chat["chat_title"], result.cursor)
            else:
                await conn.execute(queries.tg_sweep_paused, {"checkpoint_id": chat["id"]})
                self._next[key] = (0.0, generation)   # more to read: due again after the others
        if result.messages:
            logger.info("chat %s: read %d message(s) up to %s, %d new job(s)%s", chat["chat_id"],
                        result.messages, result.cursor, result.new_jobs,
                        "" if result.reached_newest else " (continues)")


async def resolve_input_entity(client: Any, chat_id: int):
    """The input peer of a watched chat. Telethon knows it from the session's entity cache; if it
    does not (a fresh session), the dialogs are fetched once to fill the cache."""
    try:
        return await client.get_input_entity(chat_id)
    except (ValueError, errors.UserIdInvalidError, errors.PeerIdInvalidError):
        # (for an uncached user Telethon asks Telegram with access hash 0, which may be refused)
        await client.get_dialogs()
        return await client.get_input_entity(chat_id)
