"""One post into a person's topic: the ways to make it, its caption and its media (`PostSender`).

The outbox (media_uploader) claims a row and hands it here; the first way that works is used:
1. **By reference** (no upload): the hub account reads the source chat itself, so it fetches the
   message and re-sends its media (`InputMediaPhoto`/`InputMediaDocument` with a fresh file
   reference; an expired one is fetched again). Only for chats that allow forwarding.
2. **Upload**: the media's downloaded file, if it is still in the staging area (or the
   operator's export file), else downloaded again through the account that reads the source
   chat, into a temporary file removed afterwards. Staged files are deleted when their job is
   done, and outbox rows may wait for a topic, a flood wait or a missing hub, so posts never
   rely on them being there.
Protected chats (noforwards) are posted from only with REPOST_PROTECTED_CHATS=true, and then by
upload (Telegram refuses references to their media).

Every way sends `messages.SendMediaRequest` with the row's random_id; Telegram's
RandomIdDuplicateError (the answer to an earlier send was lost) is answered by finding that
earlier post in the topic (topics.find_post). A deleted topic is recreated and the post sent
again.

Caption: the source chat's title, a link to the source message (public chats:
https://t.me/<username>/<id>; private supergroups and channels: https://t.me/c/<id>/<id>, which
works for their members; basic groups and private chats have no message links, the caption says
so, and names the message's id) and the message's date.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg.rows import dict_row
from telethon import errors, functions, types, utils

from database import queries
from downloads import MediaChanged, download_message, fetch_message, media_extension, without_stalls
from processing_queue import PermanentJobError
from topics import is_topic_gone, message_id_from_updates

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from accounts import AccountRegistry
    from config import Settings
    from topics import TopicManager

logger = logging.getLogger(__name__)

CAPTION_MAX = 1024
NO_LINK = "(no link: messages of basic groups and private chats cannot be linked)"


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



# --- one post -----------------------------------------------------------------------------------


class Unpostable(Exception):
    """The row ends as `status` ('failed' or 'cancelled')."""

    def __init__(self, status: str, why: str):
        self.status = status
        super().__init__(why)


class PostLater(Exception):
    """The row waits `delay` seconds, not counted as an attempt."""

    def __init__(self, delay: float, why: str):
        self.delay = delay
        super().__init__(why)


class _Skip(Exception):
    """This source cannot be used for the post; try the next one."""


class PostSender:
    """Sends the post of one outbox row through the hub account's client (`make`)."""

    def __init__(self, registry: AccountRegistry, pool: AsyncConnectionPool, settings: Settings,
                 topics: TopicManager, *, reference_refreshes: int = 2, stall_timeout: float = 300.0):
        self.registry = registry
        self.pool = pool
        self.settings = settings
        self.topics = topics
        self.reference_refreshes = reference_refreshes
        self.stall_timeout = stall_timeout   # an upload without progress this long is abandoned
        self.staging = Path(settings.staging_path)

    async def make(self, row: dict[str, Any]) -> tuple[int, str | None]:
        """Post one claimed row into its person's topic (created or recreated as needed);
        (message id, note). `Unpostable` and `PostLater` say what becomes of a row that
        cannot be posted; Telegram's errors propagate."""
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
            raise Unpostable("cancelled", "its media item was deleted")
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
            return Unpostable("failed", "no message carries this media any more")
        if not any(self._allowed(s) for s in sources):
            return Unpostable("cancelled", "the source chat is protected (noforwards); set "
                                            "REPOST_PROTECTED_CHATS=true to post media from protected chats")
        return PostLater(600.0, "the account that reads the source chat is not held by this process; "
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
            raise PostLater(600.0, "waiting for an account: " + "; ".join(problems))
        raise Unpostable("failed", "no way to post it: " + "; ".join(problems))

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


class _TopicGone(Exception):
    """Telegram refused the post because its topic is gone: recreate it and post again."""


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("could not remove the temporary file %s: %s", path, exc)
