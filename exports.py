"""Importing a Telegram Desktop export: `python main.py import EXPORT_DIR`.

Telegram Desktop ("Export chat history" or Settings → Advanced → Export Telegram data, format
JSON) writes `result.json` and the media files beside it. Two shapes:

- one chat: ``{"name", "type", "id", "messages": [...]}``;
- the whole account: ``{"chats": {"list": [chat, ...]}, "left_chats": {"list": [...]}, ...}``.

Each message with a photo (``"photo": "photos/…jpg"``), a video, round video note or GIF
(``"file"`` with ``"media_type"`` ``video_file`` / ``video_message`` / ``animation``) or an image
sent as a file (``"mime_type": "image/…"``) becomes a job in the same queue the daemon uses,
already downloaded (status 'staged', `staged_path` = the export's own file, never deleted) and
keyed by (chat, message) with the chat's *marked* id (the export gives the bare id), so when an
account later reads the same chat through the API it finds those messages done. The media key is
``sha256:<hex>`` of the file: the same file in two chats is analysed once. The workers then
analyse the jobs exactly as they analyse downloads; persons appear without any Telegram account
and their posts wait in the outbox for the hub. Importing the same export again adds nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from psycopg_pool import AsyncConnectionPool

from database import queries
from processing_queue import FINAL_STATUSES, WorkerPool

logger = logging.getLogger(__name__)

# Telegram Desktop's chat types, and how their bare ids become marked ids (DESIGN.md §6).
_CHANNEL_TYPES = {"private_supergroup", "public_supergroup", "private_channel", "public_channel"}
_GROUP_TYPES = {"private_group", "public_group"}
_USER_TYPES = {"personal_chat", "bot_chat", "saved_messages", "replies", "verification_codes"}

_VIDEO_TYPES = {"video_file": "video", "video_message": "round", "animation": "gif"}


class ExportError(Exception):
    """The directory is not a readable Telegram Desktop JSON export; the message says why."""


def marked_chat_id(bare_id: int, chat_type: str) -> int:
    """The marked id (as Telethon's `get_peer_id` gives it) of an export's chat.

    Supergroups and channels: -100<id>; basic groups: -<id>; users, bots, saved messages: <id>.
    An id that is already negative is taken as marked.
    """
    if bare_id < 0:
        return bare_id
    if chat_type in _CHANNEL_TYPES:
        return -(10**12 + bare_id)
    if chat_type in _GROUP_TYPES:
        return -bare_id
    if chat_type in _USER_TYPES:
        return bare_id
    raise ExportError(f"unknown chat type {chat_type!r} (chat id {bare_id}); cannot tell its marked id")


@dataclass(frozen=True)
class ExportMedia:
    """One media file of the export, and the message it belongs to."""

    chat_id: int          # marked
    message_id: int
    path: Path            # absolute
    media_type: str       # 'photo', 'image', 'video', 'round', 'gif'
    mime_type: str | None
    date: datetime | None
    chat_name: str = ""


@dataclass
class ExportChat:
    """A chat of the export: recorded in imported_chats, so that it is known by its name."""

    chat_id: int
    name: str | None
    export_type: str
    messages: int = 0
    media: int = 0


@dataclass
class ExportContents:
    """What `read_export` found."""

    media: list[ExportMedia] = field(default_factory=list)
    chat_list: list[ExportChat] = field(default_factory=list)
    chats: int = 0
    messages: int = 0
    not_included: int = 0   # media the export left out (size limits, unchecked types) or lost
    other_media: Counter = field(default_factory=Counter)  # stickers, voice notes, …: not for us


def read_export(export_dir: Path) -> ExportContents:
    """Read `export_dir/result.json`; raise `ExportError` if it is missing or not an export."""
    export_dir = export_dir.expanduser().resolve()
    result = export_dir / "result.json"
    if not result.is_file():
        hint = " (Telegram Desktop writes result.json only with the JSON format, not HTML)" \
            if (export_dir / "messages.html").exists() else ""
        raise ExportError(f"{result} not found: point to the folder of a Telegram Desktop JSON export{hint}")
    try:
        data = json.loads(result.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{result} cannot be read as JSON: {exc}") from exc
    contents = ExportContents()
    for chat in _chats(data, result):
        contents.chats += 1
        _read_chat(chat, export_dir, contents)
    return contents


def _chats(data: Any, result: Path) -> Iterator[dict]:
    if isinstance(data, dict) and isinstance(data.get("messages"), list):
        yield data
        return
    if isinstance(data, dict) and isinstance(data.get("chats"), dict):
        for section in ("chats", "left_chats"):
            yield from (c for c in (data.get(section) or {}).get("list", []) if isinstance(c, dict))
        return
    raise ExportError(f"{result} is not a Telegram Desktop export: it has neither 'messages' "
                      f"(one chat) nor 'chats' (the whole account)")


def _read_chat(chat: dict, export_dir: Path, contents: ExportContents) -> None:
    try:
        chat_id = marked_chat_id(int(chat["id"]), str(chat.get("type", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"a chat in the export has no usable id: {exc}") from exc
    name = str(chat.get("name") or "")
    about = ExportChat(chat_id, name or None, str(chat.get("type", "")))
    contents.chat_list.append(about)
    for message in chat.get("messages") or []:
        if not isinstance(message, dict) or message.get("type") != "message":
            continue
        contents.messages += 1
        about.messages += 1
        found = _media_of(message)
        if found is None:
            continue
        relative, media_type, mime = found
        if media_type is None:
            contents.other_media[mime or "other"] += 1
            continue
        path = (export_dir / relative).resolve() if not relative.startswith("(") else None
        if path is None or not path.is_file() or not path.is_relative_to(export_dir):
            contents.not_included += 1
            continue
        contents.media.append(ExportMedia(chat_id, int(message["id"]), path, media_type, mime,
                                          _date(message), name))
        about.media += 1


def _media_of(message: dict) -> tuple[str, str | None, str | None] | None:
    """(relative path, media type or None if not ours, mime type) of a message, or None."""
    if isinstance(message.get("photo"), str):
        return message["photo"], "photo", "image/jpeg"
    file = message.get("file")
    if not isinstance(file, str):
        return None
    mime = message.get("mime_type")
    kind = message.get("media_type")
    if kind in _VIDEO_TYPES:
        return file, _VIDEO_TYPES[kind], mime
    if kind is None and isinstance(mime, str) and mime.startswith("image/") and mime != "image/webp":
        return file, "image", mime  # a photo sent as a file (webp files are usually stickers)
    return file, None, kind or mime


def _date(message: dict) -> datetime | None:
    if message.get("date_unixtime"):
        return datetime.fromtimestamp(int(message["date_unixtime"]), timezone.utc)
    try:
        # Older exports: local time of the exporting computer, without a zone.
        return datetime.fromisoformat(message["date"]).astimezone()
    except (KeyError, TypeError, ValueError):
        return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ImportReport:
    """What an import did."""

    files: int
    new_jobs: int
    statuses: Counter
    summary: dict[str, int]

    def lines(self, contents: ExportContents) -> list[str]:
        done = self.statuses
        lines = [
            f"export: {contents.chats} chat(s), {contents.messages} message(s), {self.files} photo/video file(s)"
            + (f", {contents.not_included} not included in the export" if contents.not_included else ""),
            f"jobs: {self.new_jobs} new, {self.files - self.new_jobs} imported (or seen through Telegram) before",
            f"done: {done['done']}, failed: {done['failed']}, skipped: {done['skipped']}"
            + (" (see the dashboard's error list)" if done["failed"] else ""),
            f"persons: {self.summary['persons']} ({self.summary['faces']} faces stored, "
            f"{self.summary['pending_faces']} waiting to meet again)",
            f"posts waiting for the hub: {self.summary['pending_posts']}",
        ]
        return lines


async def enqueue(pool: AsyncConnectionPool, contents: ExportContents, *,
                  progress: bool = False) -> tuple[list[int], int]:
    """Create the jobs of the export's media; return (every job id of these messages, new jobs).

    Hashing reads every file, so it runs in a thread; jobs are inserted in batches of one
    transaction each, so an interrupted import resumes where it stopped when run again.
    """
    from tqdm import tqdm

    async with pool.connection() as conn, conn.transaction():
        for chat in contents.chat_list:
            await conn.execute(queries.export_record_chat, {
                "chat_id": chat.chat_id, "chat_title": chat.name, "export_type": chat.export_type,
                "messages": chat.messages, "media": chat.media})
    new = 0
    bar = tqdm(total=len(contents.media), desc="reading", unit="file", disable=None if progress else True)
    with bar:
        for start in range(0, len(contents.media), 100):
            batch = contents.media[start:start + 100]
            known = await _known(pool, batch)
            async with pool.connection() as conn, conn.transaction():
                for media in batch:
                    if (media.chat_id, media.message_id) not in known:
                        key = await asyncio.to_thread(sha256_file, media.path)
                        cur = await conn.execute(queries.export_insert_job, {
                            "source_chat_id": media.chat_id, "source_message_id": media.message_id,
                            "media_key": f"sha256:{key}", "media_type": media.media_type,
                            "mime_type": media.mime_type, "file_size": media.path.stat().st_size,
                            "message_date": media.date, "staged_path": str(media.path)})
                        new += await cur.fetchone() is not None
                    bar.update(1)
    ids = sorted((await _known(pool, contents.media)).values())
    return ids, new


async def _known(pool: AsyncConnectionPool, media: list[ExportMedia]) -> dict[tuple[int, int], int]:
    async with pool.connection() as conn:
        cur = await conn.execute(queries.export_job_ids, {
            "chat_ids": [m.chat_id for m in media], "message_ids": [m.message_id for m in media]})
        return {(row[2], row[3]): row[0] for row in await cur.fetchall()}


async def run_import(pool: AsyncConnectionPool, contents: ExportContents, workers: WorkerPool, *,
                     progress: bool = False, poll: float = 0.5) -> ImportReport:
    """Queue the export's media and run `workers` until every one of its jobs is finished."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    job_ids, new = await enqueue(pool, contents, progress=progress)
    statuses = Counter((await workers.queue.statuses(job_ids)).values()) if job_ids else Counter()
    finished = sum(statuses[s] for s in FINAL_STATUSES)
    if finished < len(job_ids):
        with logging_redirect_tqdm(), tqdm(total=len(job_ids), initial=finished, desc="analysing",
                                          unit="file", disable=None if progress else True) as bar:
            runner = asyncio.create_task(workers.run(), name="import-workers")
            try:
                # The database is asked when this process finished a job (looked at in memory
                # every 50 ms, so the import ends right after its last commit) or every `poll`
                # seconds (jobs finished by other worker processes).
                local, asked = _settled(workers), time.monotonic()
                while finished < len(job_ids):
                    done, _ = await asyncio.wait([runner], timeout=min(poll, 0.05))
                    if done:  # the workers stopped (a signal, an error) before the import was over
                        runner.result()
                        break
                    if _settled(workers) == local and time.monotonic() - asked < poll:
                        continue
                    local, asked = _settled(workers), time.monotonic()
                    statuses = Counter((await workers.queue.statuses(job_ids)).values())
                    now = sum(statuses[s] for s in FINAL_STATUSES)
                    bar.update(now - finished)
                    finished = now
            finally:
                workers.stop()
                await runner
    async with pool.connection() as conn:
        cur = await conn.execute(queries.export_summary, {})
        summary = dict(zip([c.name for c in cur.description], await cur.fetchone()))
    return ImportReport(len(contents.media), new, statuses, summary)


def _settled(workers: WorkerPool) -> int:
    """Jobs this process has finished (done, failed or skipped) so far."""
    stats = workers.stats
    return stats.jobs_done + stats.jobs_failed + stats.jobs_skipped
