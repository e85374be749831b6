"""Posting due media into persons' topics: the upload outbox (uploaded_media), drained in order.

A claimed row is posted by post_sender (by reference or by upload, with its caption); this module
owns the rows: claiming, pacing, recording the outcome, retrying and handing back. Hidden (or
merged) persons get no posts: their due rows are cancelled ('person hidden' rows come back when
the person is unhidden).

Pacing: every write into the hub (posts, covers, topic creations and edits) waits for one token
bucket, HUB_POSTS_PER_MINUTE (default 20) a minute, evenly spaced, never a burst above it.

Exactly one post per (person, media), across crashes and restarts:
- the row (unique per (topic_id, media_item_id)) carries a random_id, set when it became due
  and kept until it is posted; it is sent with the post (`messages.SendMediaRequest(random_id=…)`),
  and Telegram refuses a second message with the same random_id (`RandomIdDuplicateError`);
- the row is marked 'sending' (committed) before the request goes out, with a lease;
- **if the process dies after Telegram accepted the post but before the database recorded it**,
  the row is still 'sending'. The next process to hold the hub session takes it over at once
  (only that process posts: one session, one process), a clean stop hands rows back, and a lease
  covers the rest; it is sent again with the same random_id; Telegram answers RandomIdDuplicateError,
  and the uploader finds the message in the topic (topics.find_post: its caption, not a message
  another post already has, and its media when it was re-sent by reference) and records its id. Nothing
  is posted twice. The window is as small as it can be: the database write is the very next
  step after Telegram's answer and is shielded from cancellation. (If the earlier message can
  no longer be found, e.g. someone deleted it, the row is recorded as posted without an id
  note; it is still not posted twice.)
- a deleted topic (TopicDeletedError) makes a new topic; the person's earlier posts are posted
  there again with new random ids (the old messages went with the old topic).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from psycopg.rows import dict_row
from telethon import errors

from database import queries
from flood_waits import flood_wait_left, record_flood_wait
from post_sender import PostLater, PostSender, Unpostable
from processing_queue import record_error
from retry_policy import RetryPolicy
from stoppable import Stoppable
from telegram_errors import FLOOD_WAITS, account_state
from topics import HubUnavailable, PersonNotPostable

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from accounts import AccountRegistry
    from config import Settings
    from topics import TopicManager

logger = logging.getLogger(__name__)


# --- pacing -------------------------------------------------------------------------------------


class Pacer:
    """A token bucket: at most `per_minute` acquisitions a minute, `burst` at a time (default 1:
    evenly spaced, so no 60-second window ever holds more than `per_minute`).

    `clock` and `sleep` are injectable so that tests can run a burst in fake time.
    """

    def __init__(self, per_minute: float, *, burst: int = 1, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep):
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self.sleep = sleep
        self._tokens = float(burst)
        self._last = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait until one more write is allowed, and take it."""
        async with self._lock:
            while True:
                now = self.clock()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await self.sleep((1.0 - self._tokens) / self.rate)


# --- the uploader -------------------------------------------------------------------------------


def upload_policy(max_attempts: int = 5, outage_wait: float = 30.0) -> RetryPolicy:
    """How a post that raised is retried: flood waits and a lost connection wait (the whole
    uploader pauses, the rows are not charged), anything else is an attempt, 30 s doubling."""
    return RetryPolicy(max_attempts=max_attempts, backoff_base=30.0, backoff_cap=3600.0, jitter=0.0,
                       deferred=FLOOD_WAITS, outages=(ConnectionError, OSError, asyncio.TimeoutError),
                       outage_wait=outage_wait)


class MediaUploader(Stoppable):
    """Drains the outbox into the hub through the hub account's client."""

    def __init__(self, registry: AccountRegistry, pool: AsyncConnectionPool, settings: Settings,
                 topics: TopicManager, *, batch: int = 10, poll_interval: float = 2.0,
                 offline_retry: float = 30.0, max_attempts: int = 5, reference_refreshes: int = 2,
                 stall_timeout: float = 300.0, policy: RetryPolicy | None = None):
        super().__init__()
        self.registry = registry
        self.pool = pool
        self.topics = topics
        self.batch = batch
        self.poll_interval = poll_interval
        # a post whose request broke the connection waits `offline_retry` seconds (an outage)
        self.policy = policy or upload_policy(max_attempts, outage_wait=offline_retry)
        self.sender = PostSender(registry, pool, settings, topics, reference_refreshes=reference_refreshes,
                                 stall_timeout=stall_timeout)
        # A 'sending' row is taken over after this long (its process died); longer than any
        # flood wait Telethon sleeps through inside one send.
        self.lease_seconds = max(600.0, 2.0 * settings.flood_sleep_threshold + 120.0)
        self.posted = 0

    # The sender makes the posts: the settings and the stall timeout are its.
    @property
    def settings(self) -> Settings:
        return self.sender.settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        self.sender.settings = settings

    @property
    def stall_timeout(self) -> float:
        """Seconds an upload may go without progress before it is abandoned."""
        return self.sender.stall_timeout

    @stall_timeout.setter
    def stall_timeout(self, seconds: float) -> None:
        self.sender.stall_timeout = seconds

    async def run(self) -> None:
        """Post due media until stopped."""
        warned = taken_over = False
        while not self.stopping:
            try:
                self.topics.client()
            except HubUnavailable as exc:
                if not warned:
                    logger.warning("uploads wait: %s", exc)
                    warned = True
                await self.pause(max(self.poll_interval, 10.0))
                continue
            if not taken_over:   # this process holds the hub session now
                await self.take_over_sending()
                taken_over = True
            account = self.registry.hub_account_id
            wait = await flood_wait_left(self.pool, account) if account is not None else 0.0
            if wait > 0:
                await self.until_stopped(wait)
                continue
            handled = await self.post_due(self.batch)
            if handled == 0:
                await self.pause(await self._next_due())

    async def take_over_sending(self) -> int:
        """Make the posts a dead process left 'sending' due now (see upload_take_over_sending)."""
        async with self.pool.connection() as conn:
            taken = (await conn.execute(queries.upload_take_over_sending)).rowcount
        if taken:
            logger.info("%d post(s) were being sent when the daemon last stopped; checking them now "
                        "(none is posted twice)", taken)
        return taken

    async def _next_due(self) -> float:
        async with self.pool.connection() as conn:
            row = await (await conn.execute(queries.upload_next_due)).fetchone()
        seconds = row[0] if row and row[0] is not None else self.poll_interval
        return min(max(seconds, 0.05), self.poll_interval)

    async def post_due(self, limit: int = 10) -> int:
        """Post up to `limit` due rows, one after the other; return how many were handled."""
        async with self.pool.connection() as conn:
            cancelled = (await conn.execute(queries.upload_cancel_unpostable)).rowcount
        if cancelled:
            logger.info("cancelled %d post(s) of hidden or merged persons", cancelled)
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(queries.upload_claim_due, {"limit": limit, "lease_seconds": self.lease_seconds})
            rows = await cur.fetchall()
        handled = 0
        for index, row in enumerate(rows):
            if self.stopping:
                await self._hand_back(rows[index:], 0.0, "the daemon stopped before sending it")
                break
            try:
                await self.post(row)
                handled += 1
            except FLOOD_WAITS as exc:
                wait = await record_flood_wait(self.pool, self.registry.hub_account_id, exc.seconds,
                                               "posting to the hub")
                await self._hand_back(rows[index:], wait, f"flood wait of {exc.seconds} s on the hub account")
                break
            except HubUnavailable as exc:
                await self._hand_back(rows[index:], 60.0, str(exc))
                break
            except errors.RPCError as exc:   # only account states come here (see post)
                state = await self.registry.account_problem(self.registry.hub_account_id, exc)
                await self._hand_back(rows[index:], 60.0, f"the hub account is {state}: posts wait for it")
                break
            except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
                await self._hand_back(rows[index:], self.policy.decide(exc, 0).delay, f"Telegram unreachable ({exc})")
                break
        return handled

    async def _hand_back(self, rows: list[dict[str, Any]], delay: float, why: str) -> None:
        async with self.pool.connection() as conn:
            for row in rows:
                await conn.execute(queries.upload_retry, {"upload_id": row["id"], "delay": delay,
                                                          "error": why, "counted": 0})

    async def post(self, row: dict[str, Any]) -> None:
        """Post one claimed ('sending') row; every outcome but a pause of the whole uploader
        (flood wait, no hub, offline: raised) is recorded on the row."""
        try:
            message_id, note = await self.sender.make(row)
        except PersonNotPostable as exc:
            await self._give_up(row, "cancelled", str(exc))
            return
        except Unpostable as exc:
            await self._give_up(row, exc.status, str(exc))
            return
        except (*FLOOD_WAITS, HubUnavailable, ConnectionError, OSError, asyncio.TimeoutError):
            raise
        except errors.RPCError as exc:
            if account_state(exc) is not None:
                raise   # the account's problem, not the post's: post_due marks it, the row waits
            await self._failed_attempt(row, exc)
            return
        except PostLater as exc:
            await self._retry(row, exc.delay, str(exc), counted=False)
            return
        except Exception as exc:  # one post failed: retried with backoff, then failed for good
            await self._failed_attempt(row, exc)
            return
        # Telegram has the post: record it before anything else can happen (see module doc).
        await asyncio.shield(self._record(row, message_id, note))
        self.posted += 1

    async def _record(self, row: dict[str, Any], message_id: int, note: str | None) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(queries.upload_posted, {"upload_id": row["id"], "message_id": message_id, "note": note})
        logger.info("posted media item %s into person %s's topic (message %s)%s", row["media_item_id"],
                    row["person_id"], message_id, f": {note}" if note else "")

    async def _retry(self, row: dict[str, Any], delay: float, why: str, *, counted: bool) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(queries.upload_retry, {"upload_id": row["id"], "delay": delay, "error": why,
                                                      "counted": 1 if counted else 0})

    async def _give_up(self, row: dict[str, Any], status: str, why: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(queries.upload_give_up, {"upload_id": row["id"], "status": status, "error": why})
        log = logger.info if status == "cancelled" else logger.error
        log("post of media item %s for person %s %s: %s", row["media_item_id"], row["person_id"], status, why)

    async def _failed_attempt(self, row: dict[str, Any], exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        # row["attempts"] already counts this attempt (the claim added it)
        decision = self.policy.decide(exc, row["attempts"] - 1)
        context = {"stage": "upload", "upload_id": row["id"], "person_id": row["person_id"],
                   "media_item_id": row["media_item_id"], "attempt": row["attempts"]}
        async with self.pool.connection() as conn:
            await record_error(conn, exc, job_id=None, context=context | {
                "will_retry": decision.action in ("retry", "defer")})
        if decision.action not in ("retry", "defer"):
            await self._give_up(row, "failed", error)
            return
        logger.warning("post of media item %s for person %s failed (attempt %d of %d): %s; again in %.0f s",
                       row["media_item_id"], row["person_id"], row["attempts"], self.policy.max_attempts, error,
                       decision.delay, exc_info=not isinstance(exc, errors.RPCError))
        await self._retry(row, decision.delay, error, counted=decision.counted)
