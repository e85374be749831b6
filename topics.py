"""Persons' forum topics in the hub: created lazily, renamed, closed, recreated when deleted.

- A topic is created when a person's first post is due (`ensure_topic`), with
  `messages.CreateForumTopicRequest` (Telethon >= 1.42; `channels.*` before). Its id is the id of
  the `MessageActionTopicCreate` service message in the returned `Updates`.
- Never twice: one asyncio lock per person in this process, and inside it a transaction holding
  `pg_advisory_xact_lock(topic, person)` that reads the person again before creating, so two
  processes cannot both create one. The request's random_id and title are recorded (committed)
  before it is sent and cleared when its topic is recorded: if the process dies after Telegram
  created the topic but before the database recorded it, the retry sends the same random_id,
  gets `RandomIdDuplicateError`, and looks the topic up by the title it was requested with (a
  person renamed meanwhile is found, then renamed) instead of creating another.
- The title is the person's label, at most 128 UTF-8 bytes (cut on a character boundary).
- The first post of a new topic is the person's cover crop (telegram_topics.cover_face_id ->
  face_embeddings.crop_jpeg).
- Telegram says a topic is gone (`TopicDeletedError`, someone deleted it in the app): the person
  forgets it, its posts become due again, and the next post creates a new topic (with the cover
  first). Nothing the archive had is lost.
- Every write into the hub waits for the shared pacer (HUB_POSTS_PER_MINUTE).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from typing import TYPE_CHECKING, Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from telethon import errors, functions, types, utils

from database import queries
from history_scanner import resolve_input_entity
from media_kinds import classify
from telegram_actions import TOPIC_ACTIONS, ActionFailed, ActionWait

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from accounts import AccountRegistry
    from config import Settings

logger = logging.getLogger(__name__)

TITLE_MAX_BYTES = 128
DELETE_BATCH = 100
# Error messages (not all have their own class in Telethon) that mean "that topic is not there".
_TOPIC_GONE_MESSAGES = {"TOPIC_DELETED", "TOPIC_ID_INVALID", "MESSAGE_ID_INVALID", "REPLY_MESSAGE_ID_INVALID"}


class HubUnavailable(Exception):
    """No hub to post to: HUB_GROUP_ID unset, or this process does not hold the hub account."""


class PersonNotPostable(Exception):
    """The person is hidden, merged into another, or deleted: nothing is posted for it."""


def topic_title(label: str | None, person_id: int) -> str:
    """A topic title from a person's label: at most 128 UTF-8 bytes, never a broken character."""
    text = " ".join((label or "").split()) or f"Person {person_id}"
    return text.encode("utf-8")[:TITLE_MAX_BYTES].decode("utf-8", "ignore").rstrip() or f"Person {person_id}"


def stable_random_id(*parts: object) -> int:
    """A random_id (signed 64-bit) that is the same every time for the same parts: sending the
    same thing again after a crash is then refused by Telegram instead of duplicated."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True) or 1


def new_random_id() -> int:
    """A fresh random_id (signed 64-bit, never 0), as Telethon makes them."""
    return int.from_bytes(secrets.token_bytes(8), "big", signed=True) or 1


def is_topic_gone(exc: BaseException) -> bool:
    """Whether a Telegram error means the topic a request named does not exist any more."""
    if isinstance(exc, errors.TopicDeletedError):
        return True
    return isinstance(exc, errors.RPCError) and str(getattr(exc, "message", "")).upper() in _TOPIC_GONE_MESSAGES


def message_id_from_updates(result: Any, random_id: int | None) -> int | None:
    """The id of the message a send request created: from `UpdateMessageID` (matched by
    random_id), else the new message itself."""
    updates = getattr(result, "updates", None)
    if updates is None:
        return getattr(result, "id", None)   # UpdateShortSentMessage
    for update in updates:
        if isinstance(update, types.UpdateMessageID) and (random_id is None or update.random_id == random_id):
            return update.id
    for update in updates:
        if isinstance(update, (types.UpdateNewChannelMessage, types.UpdateNewMessage)):
            return update.message.id
    return None


def topic_id_from_updates(result: Any, random_id: int | None) -> int:
    """The id of a new topic: the id of its `MessageActionTopicCreate` service message."""
    for update in getattr(result, "updates", []):
        if isinstance(update, (types.UpdateNewChannelMessage, types.UpdateNewMessage)) \
                and isinstance(update.message, types.MessageService) \
                and isinstance(update.message.action, types.MessageActionTopicCreate):
            return update.message.id
    found = message_id_from_updates(result, random_id)
    if found is None:
        raise RuntimeError("Telegram created a topic but its id is not in the answer")
    return found


class TopicManager:
    """Topics of persons in the hub (HUB_GROUP_ID), through the hub account's client."""

    kinds = TOPIC_ACTIONS

    def __init__(self, registry: AccountRegistry, pool: AsyncConnectionPool, settings: Settings, *,
                 pacer: Any = None):
        self.registry = registry
        self.pool = pool
        self.settings = settings
        self.pacer = pacer
        self._locks: dict[int, asyncio.Lock] = {}
        self._peer = None
        self.created = 0

    # --- the hub ---------------------------------------------------------------------------------

    @property
    def hub_chat_id(self) -> int | None:
        return self.settings.hub_group_id

    def client(self):
        client = self.registry.hub_client()
        if self.hub_chat_id is None:
            raise HubUnavailable("HUB_GROUP_ID is not set: posts wait in the outbox")
        if client is None:
            raise HubUnavailable("this process does not hold the hub account's client")
        return client

    async def hub_peer(self):
        """The hub's input peer; from the session's entity cache, else from the dialogs (a
        session that never saw the hub has no access hash for it)."""
        if self._peer is None:
            self._peer = await resolve_input_entity(self.client(), self.hub_chat_id)
        return self._peer

    async def _pace(self) -> None:
        if self.pacer is not None:
            await self.pacer.acquire()

    async def send(self, request: Any) -> Any:
        """Send one request that writes into the hub, after the pacer allows it."""
        await self._pace()
        return await self.client()(request)

    # --- persons ---------------------------------------------------------------------------------

    async def person(self, person_id: int) -> dict[str, Any] | None:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(queries.tg_person, {"person_id": person_id})
            return await cur.fetchone()

    def _lock(self, person_id: int) -> asyncio.Lock:
        return self._locks.setdefault(person_id, asyncio.Lock())

    def _current(self, person: dict[str, Any]) -> int | None:
        """The person's topic in the current hub, if it has one."""
        if person["topic_id"] is not None and person["hub_chat_id"] in (None, self.hub_chat_id):
            return person["topic_id"]
        return None

    async def ensure_topic(self, person_id: int) -> int:
        """The person's topic id, creating the topic (and posting its cover) if it has none."""
        for _ in range(3):
            try:
                return await self._ensure(person_id)
            except errors.RPCError as exc:
                if not is_topic_gone(exc):
                    raise
                # The topic vanished between creation and the cover post: start over.
        raise RuntimeError(f"the topic of person {person_id} keeps disappearing right after creation")

    async def _ensure(self, person_id: int) -> int:
        async with self._lock(person_id):
            person = await self.person(person_id)
            if person is None or person["hidden"] or person["merged_into"] is not None:
                raise PersonNotPostable(f"person {person_id} is hidden, merged or deleted")
            topic_id = self._current(person)
            created = False
            if topic_id is None:
                async with self.pool.connection() as conn:  # committed before Telegram may act on it
                    await conn.execute(queries.tg_plan_topic_request, {
                        "person_id": person_id, "hub_chat_id": self.hub_chat_id, "random_id": new_random_id(),
                        "title": topic_title(person["label"], person_id)})
                async with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                    await cur.execute(queries.tg_topic_lock, {"person_id": person_id})
                    await cur.execute(queries.tg_person, {"person_id": person_id})
                    person = await cur.fetchone()
                    topic_id = self._current(person)
                    if topic_id is None:
                        topic_id, title = await self._create(person, cur)
                        await cur.execute(queries.tg_set_topic, {
                            "person_id": person_id, "topic_id": topic_id, "hub_chat_id": self.hub_chat_id,
                            "title": title})
                        wanted = topic_title(person["label"], person_id)
                        if title != wanted:  # requested before a rename: rename it as the dashboard would
                            await cur.execute(queries.persons_record_action, {
                                "action": "rename_topic", "payload": Jsonb({"person_id": person_id, "title": wanted})})
                        person |= {"topic_id": topic_id, "cover_message_id": None, "topic_title": title}
                        created = True
                if created:
                    self.created += 1
                    logger.info("person %s: created topic %s «%s»", person_id, topic_id, person["topic_title"])
            if person["cover_message_id"] is None and person["cover_face_id"] is not None:
                if created or not await self._has_posts(person_id):
                    try:
                        await self._post_cover(person, topic_id)
                    except errors.RPCError as exc:
                        if is_topic_gone(exc):
                            # Deleted before its cover was posted: forget it, so that the retry in
                            # ensure_topic creates a new one instead of failing on this one again.
                            await self.topic_gone(person_id, topic_id)
                        raise
            return topic_id

    async def _create(self, person: dict[str, Any], cur: Any) -> tuple[int, str]:
        """Send the person's recorded topic request (tg_plan_topic_request); returns the topic's
        id and title. `cur`: the caller's transaction, holding the person's topic lock."""
        peer = await self.hub_peer()
        random_id = person["topic_request_random_id"]  # None only if another process just took it
        title = person["topic_request_title"] or topic_title(person["label"], person["id"])
        try:
            result = await self.send(functions.messages.CreateForumTopicRequest(
                peer=peer, title=title, random_id=random_id))
            return topic_id_from_updates(result, random_id), title
        except errors.RandomIdDuplicateError:
            # Created before a crash, never recorded: find it rather than make a second one.
            found = await self.find_topic(title, cur)
            if found is not None:
                logger.info("person %s: found topic %s created before a restart", person["id"], found)
                return found, title
            logger.warning("person %s: a topic was created before a restart but cannot be found by "
                           "its title «%s»; creating another (merge them by hand if both exist)",
                           person["id"], title)
            result = await self.send(functions.messages.CreateForumTopicRequest(peer=peer, title=title))
            return topic_id_from_updates(result, None), title

    async def find_topic(self, title: str, cur: Any) -> int | None:
        """The newest open topic of the hub titled exactly `title` that no person has (asked on
        `cur`, the caller's transaction: a second connection could wait for a full pool)."""
        result = await self.client()(functions.messages.GetForumTopicsRequest(
            peer=await self.hub_peer(), offset_date=None, offset_id=0, offset_topic=0, limit=100, q=title))
        candidates = sorted((t.id for t in result.topics
                             if isinstance(t, types.ForumTopic) and t.title == title), reverse=True)
        if not candidates:
            return None
        await cur.execute(queries.tg_topics_taken, {"topic_ids": candidates})
        taken = {r["topic_id"] for r in await cur.fetchall()}
        return next((t for t in candidates if t not in taken), None)

    async def _has_posts(self, person_id: int) -> bool:
        async with self.pool.connection() as conn:
            return bool((await (await conn.execute(queries.tg_person_has_posts, {"person_id": person_id})).fetchone())[0])

    async def _cover_bytes(self, face_id: int) -> bytes | None:
        async with self.pool.connection() as conn:
            row = await (await conn.execute(queries.tg_cover_crop, {"face_id": face_id})).fetchone()
        return bytes(row[0]) if row and row[0] else None

    async def _post_cover(self, person: dict[str, Any], topic_id: int) -> None:
        crop = await self._cover_bytes(person["cover_face_id"])
        if crop is None:
            return
        client = self.client()
        random_id = stable_random_id("cover", self.hub_chat_id, person["id"], topic_id)
        caption = topic_title(person["label"], person["id"])
        uploaded = await client.upload_file(crop, file_name=f"person-{person['id']}.jpg")
        try:
            result = await self.send(functions.messages.SendMediaRequest(
                peer=await self.hub_peer(), media=types.InputMediaUploadedPhoto(file=uploaded),
                message=caption, reply_to=types.InputReplyToMessage(reply_to_msg_id=topic_id),
                random_id=random_id))
            message_id = message_id_from_updates(result, random_id)
        except errors.RandomIdDuplicateError:
            message_id = await self.find_post(topic_id, caption) or 0
        async with self.pool.connection() as conn:
            await conn.execute(queries.tg_set_cover_message, {"person_id": person["id"], "message_id": message_id})

    async def find_post(self, topic_id: int, caption: str, *, media_key: str | None = None,
                        limit: int = 200) -> int | None:
        """The id of the message in topic `topic_id` that is the post Telegram accepted before
        its answer was lost: its text is `caption`, no other post (or cover) of the topic has
        it recorded, and, when `media_key` is given (the media was re-sent by reference, so the
        hub message carries that very photo or document), it carries that media. If several
        messages fit and nothing tells them apart, None: recording a sibling's id would make a
        later delete remove the wrong post."""
        async with self.pool.connection() as conn:
            taken = {r[0] for r in await (await conn.execute(
                queries.upload_topic_messages, {"hub_chat_id": self.hub_chat_id, "topic_id": topic_id})).fetchall()}
        fits = []
        async for message in self.client().iter_messages(await self.hub_peer(), reply_to=topic_id, limit=limit):
            if getattr(message, "message", None) != caption or message.id in taken:
                continue
            if media_key is not None:
                info = classify(message)
                if info is None or info.media_key != media_key:
                    continue
            fits.append(message.id)
        if len(fits) > 1:
            logger.warning("topic %s: %d messages could be the post whose answer was lost (%s); none is "
                           "recorded", topic_id, len(fits), fits)
        return fits[0] if len(fits) == 1 else None

    async def topic_gone(self, person_id: int, topic_id: int) -> int:
        """Telegram says the topic is gone: forget it; its posts are due again. Returns how many."""
        async with self.pool.connection() as conn:
            forgotten, reposts = await (await conn.execute(
                queries.tg_topic_gone, {"person_id": person_id, "topic_id": topic_id})).fetchone()
        if forgotten:
            logger.warning("person %s: its topic %s was deleted on Telegram; a new one is created and "
                           "its %d post(s) are posted again", person_id, topic_id, reposts)
        return reposts

    # --- dashboard actions -------------------------------------------------------------------

    def account_for(self, action: dict[str, Any]) -> int | None:
        return self.registry.hub_account_id

    def can_apply(self, action: dict[str, Any]) -> bool:
        return self.hub_chat_id is not None and self.registry.hub_client() is not None

    async def apply_action(self, action: dict[str, Any]) -> str:
        """Apply a topic-related dashboard action (see persons.py for what each one means)."""
        kind, payload = action["action"], action["payload"] or {}
        if kind == "rename_topic":
            return await self._edit(payload.get("person_id"), title=payload.get("title"))
        if kind == "hide_person":
            return await self._edit(payload.get("person_id"), closed=True)
        if kind == "unhide_person":
            return await self._edit(payload.get("person_id"), closed=False)
        if kind == "merge_persons":
            return await self._merge(payload, action["id"])
        if kind == "delete_posts":
            return await self._delete_posts(payload)
        if kind == "update_cover":
            return await self._update_cover(payload)
        raise ActionFailed(f"unknown topic action {kind!r}")

    async def _topic_of(self, person_id: Any) -> tuple[dict[str, Any], int | None]:
        if not isinstance(person_id, int):
            raise ActionFailed(f"the action names no person ({person_id!r})")
        person = await self.person(person_id)
        if person is None:
            raise ActionFailed(f"person {person_id} does not exist any more")
        return person, self._current(person)

    async def _edit(self, person_id: Any, *, title: str | None = None, closed: bool | None = None) -> str:
        person, topic_id = await self._topic_of(person_id)
        if topic_id is None:
            return "no topic yet: it is created with the current name when its first post is due"
        if title is not None:
            title = topic_title(title, person["id"])
            if title == person["topic_title"]:
                return "the topic already has this title"
        try:
            await self.send(functions.messages.EditForumTopicRequest(
                peer=await self.hub_peer(), topic_id=topic_id, title=title, closed=closed))
        except errors.RPCError as exc:
            if is_topic_gone(exc):
                await self.topic_gone(person["id"], topic_id)
                return "the topic was deleted on Telegram; a new one is created when a post is due"
            if "NOT_MODIFIED" not in str(getattr(exc, "message", "")).upper():
                raise
        if title is not None:
            async with self.pool.connection() as conn:
                await conn.execute(queries.tg_set_topic_title, {"person_id": person["id"], "title": title})
            return f"topic {topic_id} renamed «{title}»"
        return f"topic {topic_id} {'closed' if closed else 'reopened'}"

    async def _merge(self, payload: dict[str, Any], action_id: int) -> str:
        person, topic_id = await self._topic_of(payload.get("absorbed_id"))
        if topic_id is None:
            return "the merged person had no topic"
        note = payload.get("note") or f"Merged into person {payload.get('survivor_id')}."
        try:
            await self.send(functions.messages.SendMessageRequest(
                peer=await self.hub_peer(), message=note, random_id=stable_random_id("merge", action_id),
                reply_to=types.InputReplyToMessage(reply_to_msg_id=topic_id)))
        except errors.RandomIdDuplicateError:
            pass   # the note was sent before a restart
        except errors.RPCError as exc:
            if is_topic_gone(exc):
                return "the merged person's topic was already deleted"
            raise
        title = payload.get("title")
        if title:
            await self._edit(person["id"], title=title)
        await self._edit(person["id"], closed=True)
        return f"topic {topic_id} noted, renamed and closed"

    async def _delete_posts(self, payload: dict[str, Any]) -> str:
        ids = [int(i) for i in payload.get("uploaded_media_ids") or []]
        if not ids:
            return "nothing to delete"
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(queries.upload_rows, {"upload_ids": ids})
            rows = await cur.fetchall()
        if any(r["status"] == "sending" for r in rows):
            raise ActionWait("a post it withdraws is being sent; applied once it is recorded")
        messages = [r["uploaded_message_id"] for r in rows if r["status"] == "posted" and r["uploaded_message_id"]]
        if messages:
            channel = utils.get_input_channel(await self.hub_peer())
            for start in range(0, len(messages), DELETE_BATCH):   # Telegram takes 100 ids per call
                await self.send(functions.channels.DeleteMessagesRequest(
                    channel=channel, id=messages[start:start + DELETE_BATCH]))
        async with self.pool.connection() as conn:
            await conn.execute(queries.upload_withdrawn, {"upload_ids": [r["id"] for r in rows]})
        return f"deleted {len(messages)} message(s) from the topic"

    async def _update_cover(self, payload: dict[str, Any]) -> str:
        person, topic_id = await self._topic_of(payload.get("person_id"))
        if topic_id is None or not person["cover_message_id"] or person["cover_face_id"] is None:
            return "no cover post to update (the topic shows the cover when it is created)"
        crop = await self._cover_bytes(person["cover_face_id"])
        if crop is None:
            return "the chosen face has no crop"
        uploaded = await self.client().upload_file(crop, file_name=f"person-{person['id']}.jpg")
        try:
            await self.send(functions.messages.EditMessageRequest(
                peer=await self.hub_peer(), id=person["cover_message_id"],
                media=types.InputMediaUploadedPhoto(file=uploaded)))
        except errors.RPCError as exc:
            if is_topic_gone(exc):
                return "the cover message is gone; nothing to update"
            if "NOT_MODIFIED" not in str(getattr(exc, "message", "")).upper():
                raise
        return f"cover of topic {topic_id} updated"
