"""Downloading a job's media into the staging area, with the client of the job's account.

- The message is fetched again right before the download (`get_messages(chat, ids=…)`): a job
  may wait hours in the queue, and a file reference older than that is likely to have expired.
  If it still expires (`FileReferenceExpiredError`), the message is fetched again and the
  download retried, a few times.
- The file is written to a temporary name in the staging area (same file system) and renamed
  to `<job id><ext>` only when complete; the temporary file is removed whatever happens.
- At most `per_account` downloads run at once per account (Telegram throttles downloads per
  account; several accounts download in parallel).
- Deduplication happens before any download: the worker pool finishes a job whose media item
  is already analysed without calling `download()`; if a twin job finished in between, this
  raises `AlreadyAnalysed`, a short `RetryLater`, and the pool then finishes it as a duplicate.
- The fetched message must still carry the job's media (`media_key`): a message edited to carry
  another photo is skipped with a note (`MediaChanged`), never analysed under the old key.
- Errors are the queue's: the message or its media is gone → `PermanentJobError`; too large or
  edited → `JobSkipped`; this process does not hold the account → `RetryLater`. A long flood
  wait (`FloodWaitError`, and `FloodPremiumWaitError` given to the queue as one) propagates: the
  queue's retry policy defers the job and pauses the account. An error that says the account is
  logged out, banned or frozen marks the account (`AccountRegistry.account_problem`) and the job
  waits, not counted (`RetryLater`).
- A download that makes no progress for `stall_timeout` seconds is abandoned (`TimeoutError`, an
  outage for the queue), so a stalled `GetFile` cannot hold a download slot forever.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from telethon import errors, types

from database import queries
from history_scanner import resolve_input_entity
from media_kinds import classify
from processing_queue import JobSkipped, PermanentJobError, RetryLater
from telegram_errors import FLOOD_WAITS, account_state, as_flood_wait

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from accounts import AccountRegistry
    from config import Settings

logger = logging.getLogger(__name__)


class MediaChanged(JobSkipped):
    """The message now carries other media than the job's (it was edited)."""


class AlreadyAnalysed(RetryLater):
    """The same media was analysed by another job meanwhile: no download needed."""

    def __init__(self, media_key: str):
        super().__init__(0.0, f"{media_key} was analysed by another job meanwhile")


def media_extension(message_or_media: Any) -> str:
    """The file extension for a message's media: .jpg for photos, from the mime type otherwise."""
    media = getattr(message_or_media, "media", message_or_media)
    if isinstance(media, types.MessageMediaPhoto):
        return ".jpg"
    doc = getattr(media, "document", None)
    if isinstance(doc, types.Document):
        for attribute in doc.attributes or []:
            if isinstance(attribute, types.DocumentAttributeFilename):
                suffix = Path(attribute.file_name).suffix.lower()
                if 1 < len(suffix) <= 6:
                    return suffix
        guessed = mimetypes.guess_extension(doc.mime_type or "")
        if guessed:
            return ".jpg" if guessed == ".jpe" else guessed
    return ".bin"


class MediaDownloadManager:
    """Downloads jobs' media for the accounts this process holds."""

    def __init__(self, registry: AccountRegistry, pool: AsyncConnectionPool, settings: Settings, *,
                 per_account: int = 2, reference_refreshes: int = 3, stall_timeout: float = 300.0):
        self.registry = registry
        self.pool = pool
        self.settings = settings
        self.staging = Path(settings.staging_path)
        self.per_account = per_account
        self.reference_refreshes = reference_refreshes
        self.stall_timeout = stall_timeout
        self._slots: dict[int, asyncio.Semaphore] = {}
        self.downloads = 0

    def _slot(self, account_id: int) -> asyncio.Semaphore:
        if account_id not in self._slots:
            self._slots[account_id] = asyncio.Semaphore(self.per_account)
        return self._slots[account_id]

    async def download(self, job: Any) -> Path:
        """Download `job`'s media to STAGING_DIR/<job id><ext>; return the path.

        `job` needs `id`, `account_id`, `source_chat_id`, `source_message_id`, `media_key`.
        """
        if not self.registry.holds(job.account_id):
            raise RetryLater(60.0, f"account {job.account_id} is not held by this process")
        if await self._analysed(job.media_key):
            raise AlreadyAnalysed(job.media_key)
        client = self.registry.client(job.account_id)
        async with self._slot(job.account_id):
            try:
                return await self._download(client, job)
            except FLOOD_WAITS as exc:
                raise as_flood_wait(exc) from exc
            except errors.RPCError as exc:
                if account_state(exc) is None:
                    raise
                await self.registry.account_problem(job.account_id, exc)
                raise RetryLater(600.0, f"account {job.account_id} cannot be used: {type(exc).__name__}") from exc

    async def _download(self, client: Any, job: Any) -> Path:
        message = await fetch_message(client, job.source_chat_id, job.source_message_id, media_key=job.media_key)
        info = classify(message)
        if info.file_size is not None and info.file_size > self.settings.max_media_bytes:
            raise JobSkipped(f"{info.file_size / 2**20:.0f} MB is more than MAX_MEDIA_SIZE_MB")
        self.staging.mkdir(parents=True, exist_ok=True)
        target = self.staging / f"{job.id}{media_extension(message)}"
        await download_message(client, message, target, chat_id=job.source_chat_id,
                               refreshes=self.reference_refreshes, media_key=job.media_key,
                               stall_timeout=self.stall_timeout)
        self.downloads += 1
        return target

    async def _analysed(self, media_key: str) -> bool:
        async with self.pool.connection() as conn:
            row = await (await conn.execute(queries.queue_media_item_by_key, {"media_key": media_key})).fetchone()
        return bool(row and row[1] == "analysed")


async def fetch_message(client: Any, chat_id: int, message_id: int, *, media_key: str | None = None):
    """The message `message_id` of chat `chat_id`, fetched now (fresh file references).
    Raises `PermanentJobError` if it was deleted, `MediaChanged` if it no longer carries the
    media `media_key` (when given)."""
    entity = await resolve_input_entity(client, chat_id)
    message = await client.get_messages(entity, ids=message_id)
    if message is None or isinstance(message, types.MessageEmpty) or getattr(message, "media", None) is None:
        raise PermanentJobError(f"message {message_id} of chat {chat_id} was deleted (or lost its media)")
    if media_key is not None:
        info = classify(message)
        if info is None or info.media_key != media_key:
            raise MediaChanged(f"message {message_id} of chat {chat_id} was edited: it carries "
                               f"{info.media_key if info else 'no photo or video'} now, not {media_key}")
    return message


async def download_message(client: Any, message: Any, target: Path, *, chat_id: int, refreshes: int = 3,
                           media_key: str | None = None, stall_timeout: float = 300.0) -> Path:
    """Download `message`'s media to `target` through a temporary file; an expired file reference
    fetches the message again (it must still carry `media_key`) and retries (up to `refreshes`
    times). No progress for `stall_timeout` seconds: `asyncio.TimeoutError`."""
    temp = target.with_name(f"{target.stem}.{secrets.token_hex(4)}.part")
    try:
        for attempt in range(refreshes + 1):
            try:
                written = await without_stalls(client.download_media(message, file=str(temp)),
                                               lambda: temp.stat().st_size if temp.exists() else 0, stall_timeout)
                break
            except (errors.FileReferenceExpiredError, errors.FileReferenceInvalidError):
                if attempt == refreshes:
                    raise
                logger.info("chat %s message %s: file reference expired; fetching the message again",
                            chat_id, message.id)
                message = await fetch_message(client, chat_id, message.id, media_key=media_key)
        if written is None:
            raise PermanentJobError(f"message {message.id} of chat {chat_id} has nothing to download")
        await asyncio.to_thread(os.replace, written, target)
        return target
    finally:
        await asyncio.to_thread(_remove, temp)


async def without_stalls(transfer: Any, progress: Any, stall_timeout: float):
    """Await `transfer` (a download or an upload), giving up with `asyncio.TimeoutError` when
    `progress()` (bytes so far) stays the same for `stall_timeout` seconds."""
    task = asyncio.ensure_future(transfer)
    size, since = -1, asyncio.get_running_loop().time()
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=min(5.0, stall_timeout))
            if done:
                return task.result()
            now = asyncio.get_running_loop().time()
            current = progress()
            if current != size:
                size, since = current, now
            elif now - since >= stall_timeout:
                raise asyncio.TimeoutError(f"the transfer made no progress for {stall_timeout:.0f} s")
    finally:
        if not task.done():
            task.cancel()


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("could not remove the temporary file %s: %s", path, exc)
