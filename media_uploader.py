"""Posting due media into persons' topics: the upload outbox (uploaded_media), drained in order.

How a post is made (the first way that works):
1. **By reference** (no upload): the hub account reads the source chat itself, so it fetches the
   message and re-sends its media (`InputMediaPhoto`/`InputMediaDocument` with a fresh file
   reference; an expired one is fetched again). Only for chats that allow forwarding.
2. **Upload**: the media's downloaded file, if it is still in the staging area (or the
   operator's export file), else downloaded again through the account that reads the source
   chat, into a temporary file removed afterwards. Staged files are deleted when their job is
   done, and outbox rows may wait for a topic, a flood wait or a missing hub, so the uploader
   never relies on them being there.
Protected chats (noforwards) are posted from only with REPOST_PROTECTED_CHATS=true, and then by
upload (Telegram refuses references to their media). Hidden (or merged) persons get no posts:
their due rows are cancelled ('person hidden' rows come back when the person is unhidden).

Caption: the source chat's title, a link to the source message (public chats:
https://t.me/<username>/<id>; private supergroups and channels: https://t.me/c/<id>/<id>, which
works for their members; basic groups and private chats have no message links, the caption says
so, and names the message's id) and the message's date.

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
import mimetypes
import os
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg.rows import dict_row
from telethon import errors, functions, types, utils

from accounts import flood_wait_left, record_flood_wait
from database import queries
from downloads import MediaChanged, download_message, fetch_message, media_extension, without_stalls
from processing_queue import PermanentJobError, record_error
from retry_policy import RetryPolicy
from stoppable import Stoppable
from telegram_errors import FLOOD_WAITS, account_state
from topics import HubUnavailable, PersonNotPostable, is_topic_gone, message_id_from_updates

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from accounts import AccountRegistry
    from config import Settings
    from topics import TopicManager

logger = logging.getLogger(__name__)

CAPTION_MAX = 1024
NO_LINK = "(no link: messages of basic groups and private chats cannot be linked)"


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


# --- captions -----------------------------------------------------------------------------------


def message_link(chat_id: int, message_id: int, *, username: str | None = None,
                 chat_type: str | None = None) -> str | None:
    """A t.me link to a message, or None where Telegram has none (basic groups, private chats)."""
    real_id, peer_type = utils.resolve_id(chat_id)
    if peer_type is not types.PeerChannel or chat_type in ("group", "user"):
        return None
    if username:
        return f"https://t.me/{username}/{message_id}"
    return f"https://t.me/c/{real_id}/{message_id}"


def caption_for(source: dict[str, Any], date: datetime | None) -> str:
    """The caption of a post: source chat, link to the source message, date."""
    link = message_link(source["source_chat_id"], source["source_message_id"],
                        username=source.get("chat_username"), chat_type=source.get("chat_type"))
    when = date.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if date else "date unknown"
    # Without a link the message's id keeps captions apart (two photos of one album would
    # otherwise share one, and recovering a lost post could take its sibling: see find_post).
    tail = f"\n{link or 'message ' + str(source['source_message_id']) + ' ' + NO_LINK}\n{when}"
    title = source.get("chat_title") or f"chat {source['source_chat_id']}"
    room = CAPTION_MAX - len(tail)
    if len(title) > room:
        title = title[:room - 1] + "…"
    return f"{title}{tail}"


# --- the uploader -------------------------------------------------------------------------------


class _Skip(Exception):
    """This source cannot be used for the post; try the next one."""


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
        self.settings = settings
        self.topics = topics
        self.batch = batch
        self.poll_interval = poll_interval
        # a post whose request broke the connection waits `offline_retry` seconds (an outage)
        self.policy = policy or upload_policy(max_attempts, outage_wait=offline_retry)
        self.reference_refreshes = reference_refreshes
        self.stall_timeout = stall_timeout   # an upload without progress this long is abandoned
        # A 'sending' row is taken over after this long (its process died); longer than any
        # flood wait Telethon sleeps through inside one send.
        self.lease_seconds = max(600.0, 2.0 * settings.flood_sleep_threshold + 120.0)
        self.staging = Path(settings.staging_path)
        self.posted = 0

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
            message_id, note = await self._post(row)
        except PersonNotPostable as exc:
            await self._give_up(row, "cancelled", str(exc))
            return
        except _Unpostable as exc:
            await self._give_up(row, exc.status, str(exc))
            return
        except (*FLOOD_WAITS, HubUnavailable, ConnectionError, OSError, asyncio.TimeoutError):
            raise
        except errors.RPCError as exc:
            if account_state(exc) is not None:
                raise   # the account's problem, not the post's: post_due marks it, the row waits
            await self._failed_attempt(row, exc)
            return
        except _Later as exc:
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

    # --- one post -------------------------------------------------------------------------------

    async def _post(self, row: dict[str, Any]) -> tuple[int, str | None]:
        item, sources = await self._sources(row)
        plans = self._plans(sources)
        if not plans:
            raise self._why_not(sources)
        for _ in range(3):   # a deleted topic is recreated and the post sent again
            topic_id = await self.topics.ensure_topic(row["person_id"])
            try:
                return await self._try_plans(row, item, plans, topic_id)
            except _TopicGone:
                await self.topics.topic_gone(row["person_id"], topic_id)
        raise RuntimeError(f"the topic of person {row['person_id']} keeps disappearing")

    async def _sources(self, row: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(queries.upload_media_item, {"media_item_id": row["media_item_id"]})
            item = await cur.fetchone()
            await cur.execute(queries.upload_sources, {"media_item_id": row["media_item_id"],
                                                      "hub_account_id": self.registry.hub_account_id})
            sources = await cur.fetchall()
        if item is None:
            raise _Unpostable("cancelled", "its media item was deleted")
        for source in sources:
            source["message_date"] = source["message_date"] or item["message_date"]
        return item, sources

    def _allowed(self, source: dict[str, Any]) -> bool:
        return not source["noforwards"] or self.settings.repost_protected_chats

    def _plans(self, sources: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        """The ways to post, best first: by reference, then a file at hand, then a new download."""
        allowed = [s for s in sources if self._allowed(s)]
        plans = [("reference", s) for s in allowed if s["hub_reads"] and not s["noforwards"]
                 and self.registry.hub_client() is not None]
        plans += [("file", s) for s in allowed if s["staged_path"] and os.path.isfile(s["staged_path"])]
        plans += [("download", s) for s in allowed if s["origin"] == "telegram" and self.registry.holds(s["account_id"])]
        return plans

    def _why_not(self, sources: list[dict[str, Any]]) -> Exception:
        if not sources:
            return _Unpostable("failed", "no message carries this media any more")
        if not any(self._allowed(s) for s in sources):
            return _Unpostable("cancelled", "the source chat is protected (noforwards); set "
                                            "REPOST_PROTECTED_CHATS=true to post media from protected chats")
        return _Later(600.0, "the account that reads the source chat is not held by this process; "
                             "waiting for a process that holds it (or for the hub account to read the chat)")

    async def _try_plans(self, row: dict[str, Any], item: dict[str, Any], plans: list, topic_id: int) -> tuple[int, str | None]:
        problems = []
        waits = False
        for how, source in plans:
            caption = caption_for(source, source["message_date"])
            try:
                if how == "reference":
                    message_id = await self._by_reference(row, item, source, caption, topic_id)
                else:
                    message_id = await self._by_upload(row, item, source, caption, topic_id, download=how == "download")
            except _Skip as exc:
                problems.append(f"{how} from chat {source['source_chat_id']}: {exc}")
                waits = waits or isinstance(exc, _AccountWaits)
                continue
            except errors.RandomIdDuplicateError:
                found = await self.topics.find_post(topic_id, caption,
                                                    media_key=item["media_key"] if how == "reference" else None)
                note = "already posted before a restart" + ("" if found else "; its message was not found")
                return found or 0, note
            return message_id, None if how == "reference" else f"uploaded ({how})"
        if waits:   # an account that may come back could still post it
            raise _Later(600.0, "waiting for an account: " + "; ".join(problems))
        raise _Unpostable("failed", "no way to post it: " + "; ".join(problems))

    async def _send(self, media: Any, caption: str, topic_id: int, random_id: int) -> int:
        try:
            result = await self.topics.send(functions.messages.SendMediaRequest(
                peer=await self.topics.hub_peer(), media=media, message=caption,
                reply_to=types.InputReplyToMessage(reply_to_msg_id=topic_id), random_id=random_id))
        except errors.RPCError as exc:
            # Only the post's own answer says whether the topic is gone: the same error names
            # (MESSAGE_ID_INVALID, …) from fetching or downloading the source mean something else.
            if is_topic_gone(exc):
                raise _TopicGone(f"topic {topic_id}: {type(exc).__name__}") from exc
            raise
        message_id = message_id_from_updates(result, random_id)
        if message_id is None:
            raise RuntimeError("Telegram accepted the post but its message id is not in the answer")
        return message_id

    async def _by_reference(self, row: dict[str, Any], item: dict[str, Any], source: dict[str, Any], caption: str,
                            topic_id: int) -> int:
        client = self.topics.client()
        message = await self._fetch(client, source, item["media_key"])
        if getattr(message, "noforwards", False):
            raise _Skip("the message is protected")
        for attempt in range(self.reference_refreshes + 1):
            try:
                return await self._send(utils.get_input_media(message.media), caption, topic_id, row["random_id"])
            except (errors.FileReferenceExpiredError, errors.FileReferenceInvalidError):
                if attempt == self.reference_refreshes:
                    raise
                message = await self._fetch(client, source, item["media_key"])
            except (errors.ChatForwardsRestrictedError, errors.MediaEmptyError) as exc:
                raise _Skip(type(exc).__name__) from exc
        raise AssertionError("unreachable")

    async def _fetch(self, client: Any, source: dict[str, Any], media_key: str):
        """The source message, fetched now; it must still carry the post's media (`media_key`):
        an edited message is skipped, never re-sent with what it carries now."""
        try:
            return await fetch_message(client, source["source_chat_id"], source["source_message_id"],
                                       media_key=media_key)
        except (PermanentJobError, MediaChanged) as exc:
            raise _Skip(str(exc)) from exc
        except (errors.ChannelPrivateError, errors.ChatForbiddenError, errors.ChannelInvalidError, ValueError) as exc:
            raise _Skip(f"cannot read the chat ({type(exc).__name__})") from exc
        except errors.MessageIdInvalidError as exc:
            raise _Skip(f"the source message is gone ({type(exc).__name__})") from exc

    async def _download_source(self, row: dict[str, Any], item: dict[str, Any], source: dict[str, Any]):
        """Download the source message's media with the account that reads its chat, into a
        temporary file (the caller removes it); (path, message). That account being logged
        out, banned or frozen is its problem, not the hub's: it is marked, and this source skipped."""
        client = self.registry.client(source["account_id"])
        try:
            message = await self._fetch(client, source, item["media_key"])
            if getattr(message, "noforwards", False) and not self.settings.repost_protected_chats:
                raise _Skip("the message is protected")
            self.staging.mkdir(parents=True, exist_ok=True)
            temp = self.staging / f"upload-{row['id']}{media_extension(message)}"
            try:
                return await download_message(client, message, temp, chat_id=source["source_chat_id"],
                                              media_key=item["media_key"]), message
            except BaseException:
                await asyncio.to_thread(_remove, temp)
                raise
        except errors.RPCError as exc:
            state = await self.registry.account_problem(source["account_id"], exc)
            if state is None:
                raise
            raise _AccountWaits(f"account {source['account_id']} is {state}") from exc

    async def _by_upload(self, row: dict[str, Any], item: dict[str, Any], source: dict[str, Any], caption: str,
                         topic_id: int, *, download: bool) -> int:
        message = None
        temp: Path | None = None
        try:
            if download:
                path, message = await self._download_source(row, item, source)
                temp = path
            else:
                path = Path(source["staged_path"])
            try:
                sent = [0]
                uploaded = await without_stalls(
                    self.topics.client().upload_file(str(path), progress_callback=lambda done, _: sent.__setitem__(0, done)),
                    lambda: sent[0], self.stall_timeout)
            except FileNotFoundError as exc:   # the job finished and removed it just now
                raise _Skip("the downloaded file is gone") from exc
            media = upload_media(uploaded, item, path, message)
            return await self._send(media, caption, topic_id, row["random_id"])
        finally:
            if temp is not None:
                await asyncio.to_thread(_remove, temp)


def upload_media(uploaded: Any, item: dict[str, Any], path: Path, message: Any = None):
    """The InputMedia for an uploaded file: a photo for photos and still images, else a document
    with the source's attributes (a round video is posted as an ordinary video)."""
    mime = item["mime_type"] or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if item["media_type"] == "photo" or (item["media_type"] == "image" and mime in ("image/jpeg", "image/png", "image/webp")):
        return types.InputMediaUploadedPhoto(file=uploaded)
    document = getattr(getattr(message, "media", None), "document", None)
    if isinstance(document, types.Document):
        attributes = []
        for attribute in document.attributes or []:
            if isinstance(attribute, types.DocumentAttributeVideo):
                attribute = types.DocumentAttributeVideo(duration=attribute.duration, w=attribute.w, h=attribute.h,
                                                         supports_streaming=True)
            if isinstance(attribute, (types.DocumentAttributeVideo, types.DocumentAttributeAnimated,
                                      types.DocumentAttributeFilename, types.DocumentAttributeImageSize)):
                attributes.append(attribute)
    else:
        attributes, mime = utils.get_attributes(str(path), mime_type=mime)
        if item["media_type"] == "gif":
            attributes.append(types.DocumentAttributeAnimated())
    return types.InputMediaUploadedDocument(file=uploaded, mime_type=mime, attributes=attributes)


class _AccountWaits(_Skip):
    """This source's account cannot be used now (logged out, banned, frozen): the post waits."""


class _Unpostable(Exception):
    """The row ends as `status` ('failed' or 'cancelled')."""

    def __init__(self, status: str, why: str):
        self.status = status
        super().__init__(why)


class _TopicGone(Exception):
    """Telegram refused the post because its topic is gone: recreate it and post again."""


class _Later(Exception):
    """The row waits `delay` seconds, not counted as an attempt."""

    def __init__(self, delay: float, why: str):
        self.delay = delay
        super().__init__(why)


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("could not remove the temporary file %s: %s", path, exc)
