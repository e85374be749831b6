"""A fake Telegram *server* beneath the real Telethon client.

Tests use real `telethon.TelegramClient` objects on real SQLite session files; only the network
sender (`client._sender`, an `MTProtoSender`) is replaced by `FakeSender`, which hands every TL
request Telethon builds to an in-process `TelegramServer`. So everything of Telethon above the
sender runs as in production: `_call` (its retries of server errors, flood sleeps and the
per-request flood-wait memory), the entity cache in the session, `iter_messages` paging through
`messages.GetHistory`/`GetReplies`, `download_media`'s chunked `upload.GetFile`, `upload_file`'s
`SaveFilePart`s, `send_file`, and updates through Telethon's MessageBox and update loop into
`events.NewMessage` handlers.

The wire, as far as it matters: every request is serialised (`bytes(request)`) and read back
(`BinaryReader.tgread_object()`) before the server looks at it, so a request that could not go
on the wire fails the test; every answer is serialised and read back with the request's own
`read_result`, and errors are built by Telethon's `rpc_message_to_error` from an error code and
message, so they are the classes Telethon raises (RANDOM_ID_DUPLICATE is a 500 `ServerError`:
`_call` sends it again and, without `raise_last_call_error=True`, raises `ValueError`).

The world is Telegram's:
- access hashes are per account (an id with another account's hash is CHANNEL_INVALID /
  PEER_ID_INVALID); photos and documents have per-account access hashes and file references
  (another account's reference is MEDIA_EMPTY; `expire_references()` makes FILE_REFERENCE_EXPIRED);
- message ids: channels and supergroups number their messages per chat; private chats and basic
  groups per *account* (one counter per account across all of them), so one message of a basic
  group has a different id for each member, and two accounts' private chats with one user are
  two chats with the same marked id;
- forum topics (the id of the `MessageActionTopicCreate` service message), `reply_to` into them,
  TOPIC_DELETED after `delete_topic()`;
- random_id memory per peer: a second message with a used random_id is RANDOM_ID_DUPLICATE;
- group migration (`migrate(group)`): a basic group becomes a new supergroup, the old one ending
  with `MessageActionChatMigrateTo`, the new one starting with `MessageActionChannelMigrateFrom`;
- protected chats (noforwards): re-sending their media by reference is CHAT_FORWARDS_RESTRICTED;
- updates: a new message is pushed to every connected member account as Telegram does
  (`UpdateNewChannelMessage` with the channel's pts; `UpdateNewMessage` with the account's pts),
  and `updates.GetDifference`/`GetChannelDifference` answer from the same log;
- accounts: `revoke(phone)` (AUTH_KEY_UNREGISTERED or SESSION_REVOKED), `ban(phone)`
  (USER_DEACTIVATED_BAN), `freeze(phone)` (FROZEN_METHOD_INVALID on every write).

Faults: `server.fail("SendMediaRequest", "FLOOD_WAIT_30")`, `"FLOOD_PREMIUM_WAIT_900"`,
`"RANDOM_ID_DUPLICATE"`, … (any Telegram error message; the code comes from Telethon's table),
`"ConnectionError"` (the connection broke: the caller gets `ConnectionError`), `"hang"` (no
answer, ever), `"expire_reference"` (every file reference expires just before the request),
`"revoke"` (the account is logged out just before it: `fail("GetHistoryRequest", "revoke",
phone=p, after=1)` logs it out in the middle of a backfill). `accept=True`: the server applies the request, then the answer is lost (the
error is what the caller sees) — a post or a topic Telegram has but the client never heard of.
`drop_connection(phone)`, then `restore_connection(phone)`: the network drops the account's
connection and Telethon reconnects by itself; updates sent meanwhile are lost, as they are.

    server = TelegramServer()
    server.add_account("+15550001")
    news = server.add_chat("News", kind="channel", members=["+15550001"])
    server.post(news, server.photo(FACES / "a.jpg"), text="hi")
    client = server.client("+15550001", tmp_path / "a.session")   # a real TelegramClient
    await client.connect()
    async for message in client.iter_messages(news): ...

`server.factory(**options)` is a client factory for `accounts.AccountRegistry`; it logs the
account into its session file (as `init_account.py` would) the first time.

Modules: this one (building and reading a world, clients, the sender), tests/telegram_requests.py
(the request handlers), tests/telegram_world.py (the records and errors), tests/telegram_wire.py
(the server on a Unix socket, for a daemon in a subprocess), tests/server_harness.py (the
daemon's Telegram side on it, with accounts in the database).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from telethon import TelegramClient, errors, types, utils
from telethon.crypto import AuthKey
from telethon.extensions import BinaryReader
from telethon.network.mtprotosender import MTProtoSender
from telethon.sessions import SQLiteSession
from telethon.tl import TLObject, functions

from telegram_requests import Requests
from telegram_world import (API_HASH, API_ID, DC_ID, DC_IP, DELETE_MAX, _EPOCH, _WRITES, Account, Chat, Fault,  # noqa: F401
                            Media, Msg, RpcFailure, _Hang, _hash64, _now, encode_result, error_code, fault_error)


class TelegramServer(Requests):
    """The state of a fake Telegram, and the handlers of the requests its clients send."""

    def __init__(self, *, dc_id: int = DC_ID, clock=time.monotonic):
        self.dc_id = dc_id
        self.clock = clock
        self.accounts: dict[str, Account] = {}
        self.users: dict[int, dict] = {}
        self.chats: dict[int, Chat] = {}          # channels, supergroups, basic groups by marked id
        self.media: dict[str, Media] = {}
        self.faults: list[Fault] = []
        self.bugs: list[str] = []                 # requests the fake itself failed on (telegram_wire)
        self.calls: list[tuple[str, str, float]] = []   # (phone, request class name, clock()), in order
        self.downloads: dict[str, int] = {}       # media key -> complete downloads
        self.senders: dict[str, set[FakeSender]] = {}
        self.dropped: dict[str, set[FakeSender]] = {}   # drop_connection: reconnecting
        self._seq = itertools.count(1000)
        self._lock = asyncio.Lock()

    # --- building a world -------------------------------------------------------------------------

    def add_account(self, phone: str, *, first_name: str = "Archivist", username: str | None = None) -> int:
        user_id = 700000000 + next(self._seq)
        self.accounts[phone] = Account(phone, user_id, first_name, username)
        self.users[user_id] = {"first_name": first_name, "username": username, "phone": phone.lstrip("+")}
        return user_id

    def add_user(self, first_name: str, *, username: str | None = None) -> int:
        user_id = 800000000 + next(self._seq)
        self.users[user_id] = {"first_name": first_name, "username": username, "phone": None}
        return user_id

    def add_chat(self, title: str, *, kind: str = "supergroup", username: str | None = None,
                 noforwards: bool = False, members: list[str] | tuple = (), admins: list[str] | None = None,
                 forum: bool = False) -> int:
        """A channel, supergroup or basic group ('group'); returns its marked id."""
        raw = (1500000000 if kind in ("channel", "supergroup") else 400000000) + next(self._seq)
        if kind not in ("channel", "supergroup", "group"):
            raise ValueError(f"unknown chat kind {kind!r}")
        chat = Chat(kind, raw, title, username, noforwards, forum, set(members),
                    set(admins if admins is not None else members))
        self.chats[chat.marked] = chat
        return chat.marked

    def add_hub(self, title: str = "Faces hub", *, members: list[str] | tuple = ()) -> int:
        return self.add_chat(title, kind="supergroup", members=members, forum=True)

    def add_private_chat(self, phone: str, user_id: int) -> int:
        """Account `phone`'s private chat with user `user_id` (marked id: the user id)."""
        user = self.users[user_id]
        chat = Chat("user", user_id, user["first_name"], user["username"], members={phone}, owner=phone)
        self.accounts[phone].private[user_id] = chat
        return user_id

    def join(self, chat_id: int, phone: str, *, admin: bool = False) -> None:
        chat = self.chats[chat_id]
        chat.members.add(phone)
        if admin:
            chat.admins.add(phone)

    def photo(self, path: str | Path) -> str:
        from PIL import Image
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            w, h = image.size
        return self._media("photo", data, w=w, h=h)

    def image_document(self, path: str | Path, *, mime: str = "image/png") -> str:
        data = Path(path).read_bytes()
        return self._media("document", data, mime=mime,
                           attributes=[types.DocumentAttributeFilename(Path(path).name)])

    def video(self, path: str | Path, *, round: bool = False, duration: float = 3.0, w: int = 320, h: int = 240) -> str:
        attributes = [types.DocumentAttributeVideo(duration=duration, w=w, h=h, round_message=round or None)]
        if not round:
            attributes.append(types.DocumentAttributeFilename(Path(path).name))
        return self._media("document", Path(path).read_bytes(), mime="video/mp4", attributes=attributes)

    def _media(self, kind: str, data: bytes, **fields: Any) -> str:
        media_id = 5000000000000 + next(self._seq)
        self.media[f"{kind}:{media_id}"] = Media(kind, media_id, data, **fields)
        return f"{kind}:{media_id}"

    def post(self, chat_id: int, media: str | None = None, text: str = "", *, owner: str | None = None,
             deliver: bool = True, date: datetime | None = None, grouped_id: int | None = None,
             sender: int | None = None) -> dict[str, int] | int:
        """A new message from someone else. Channels: returns its id. Basic groups: one copy
        per member, returns {phone: id}. Private chats (`owner` = the account): returns the id.
        `deliver=False`: Telegram never announces it (a missed update; history has it)."""
        fields = dict(date=date or _now(), text=text, media=media, grouped_id=grouped_id, sender=sender)
        if chat_id > 0:
            chat = self.accounts[owner].private[chat_id]
            return self._append(chat, {owner}, fields, deliver)[owner]
        chat = self.chats[chat_id]
        if chat.migrated_to is not None:
            raise ValueError(f"chat {chat_id} migrated to {chat.migrated_to}: post there")
        ids = self._append(chat, chat.members, fields, deliver)
        return ids if chat.per_account else next(iter(ids.values()))

    def migrate(self, group_id: int, *, deliver: bool = True) -> int:
        """A basic group becomes a supergroup (an admin turned on a supergroup-only feature): a
        new channel with the same members, starting with `MessageActionChannelMigrateFrom`; the
        old group ends with `MessageActionChatMigrateTo` (one per member, in each one's ids),
        is `deactivated` with `migrated_to`, and keeps its history. Returns the new marked id."""
        group = self.chats[group_id]
        if group.kind != "group" or group.migrated_to is not None:
            raise ValueError(f"chat {group_id} is not a basic group that can migrate")
        new_id = self.add_chat(group.title, kind="supergroup", members=sorted(group.members),
                               admins=sorted(group.admins))
        new = self.chats[new_id]
        new.migrated_from = group_id
        self._append(group, group.members, dict(date=_now(), action=types.MessageActionChatMigrateTo(new.raw_id)),
                     deliver)
        group.migrated_to = new_id
        self._append(new, new.members, dict(date=_now(), action=types.MessageActionChannelMigrateFrom(
            group.title, group.raw_id)), deliver)
        return new_id

    def history(self, chat_id: int, items: list[tuple[str | None, str]], *, owner: str | None = None) -> Any:
        """Many old messages at once (no updates): [(media key or None, text), …]."""
        return [self.post(chat_id, media, text, owner=owner, deliver=False, date=_EPOCH + timedelta(minutes=i))
                for i, (media, text) in enumerate(items)]

    def forward(self, from_chat: int, message_id: int, to_chat: int, *, phone: str | None = None) -> Any:
        """Someone forwards a message: the copy carries the same photo or document."""
        original = self._messages(self._chat_for(phone, from_chat), phone)[message_id]
        return self.post(to_chat, original.media, original.text)

    def delete_message(self, chat_id: int, message_id: int, *, phone: str | None = None) -> None:
        self._messages(self._chat_for(phone, chat_id), phone)[message_id].deleted = True

    def edit_message(self, chat_id: int, message_id: int, *, media: str | None = None, text: str | None = None,
                     phone: str | None = None) -> None:
        message = self._messages(self._chat_for(phone, chat_id), phone)[message_id]
        message.media = media if media is not None else message.media
        message.text = text if text is not None else message.text
        message.edit_date = _now()

    def delete_topic(self, chat_id: int, topic_id: int) -> None:
        """An admin deletes a forum topic in the app: it and its messages are gone."""
        chat = self.chats[chat_id]
        chat.topics[topic_id]["deleted"] = True
        for message in chat.messages.values():
            if message.topic == topic_id or message.id == topic_id:
                message.deleted = True

    def expire_references(self, media_key: str | None = None) -> None:
        for key, media in self.media.items():
            if media_key is None or key == media_key:
                media.generation += 1

    def revoke(self, phone: str, how: str = "AUTH_KEY_UNREGISTERED") -> None:
        """The account was logged out (from another device, or Telegram ended the session)."""
        self.accounts[phone].status = "session_revoked" if how == "SESSION_REVOKED" else "revoked"

    def ban(self, phone: str) -> None:
        self.accounts[phone].status = "banned"

    def freeze(self, phone: str) -> None:
        """A frozen account can read but not write (FROZEN_METHOD_INVALID)."""
        self.accounts[phone].status = "frozen"

    def drop_connection(self, phone: str) -> None:
        """The network drops `phone`'s connections, and Telethon's sender reconnects by itself (as
        its `_reconnect` does with `auto_reconnect`): the client keeps looking connected, its
        requests wait, and updates sent meanwhile never reach it, until `restore_connection`."""
        for sender in list(self.senders.get(phone, ())):
            if isinstance(sender, FakeSender):
                sender.drop()

    def restore_connection(self, phone: str) -> None:
        """The reconnection succeeds: waiting requests go on, and the sender calls its
        `_auto_reconnect_callback` (Telethon's `_handle_auto_reconnect`, no catch-up)."""
        for sender in list(self.dropped.pop(phone, ())):
            sender.restore()

    def fail(self, request: str, error: str, *, phone: str | None = None, times: int | None = 1,
             accept: bool = False, after: int = 0) -> None:
        """The next `times` (None: all) `request`s (a class name, e.g. "GetFileRequest") of
        `phone` (None: any account), once `after` of them went through, fail with `error`; see
        the module doc."""
        self.faults.append(Fault(request, error, phone, times, accept, after))

    # --- reading what happened ------------------------------------------------------------------

    def topics(self, hub: int) -> dict[int, dict]:
        return {k: dict(v) for k, v in self.chats[hub].topics.items()}

    def live_topics(self, hub: int) -> dict[int, dict]:
        return {k: v for k, v in self.topics(hub).items() if not v["deleted"]}

    def posts(self, hub: int, topic: int | None = None) -> list[Msg]:
        """The hub's messages that are not service messages nor deleted, oldest first."""
        chat = self.chats[hub]
        return [m for m in sorted(chat.messages.values(), key=lambda m: m.id)
                if not m.deleted and m.action is None and (topic is None or m.topic == topic)]

    def requests(self, name: str | None = None, phone: str | None = None) -> list[str]:
        return [n for p, n, _ in self.calls if (name is None or n == name) and (phone is None or p == phone)]

    def callers(self, name: str) -> list[str]:
        """The phones that sent request `name`, in order."""
        return [p for p, n, _ in self.calls if n == name]

    def call_times(self, *names: str) -> list[float]:
        return [t for _, n, t in self.calls if n in names]

    def downloads_total(self) -> int:
        return sum(self.downloads.values())

    # --- clients ----------------------------------------------------------------------------------

    def login(self, phone: str, session_path: str | Path) -> None:
        """Log `phone` into a session file, as `init_account.py` does (a new auth key)."""
        key = AuthKey(hashlib.sha256(f"{phone}:{next(self._seq)}".encode()).digest() * 8)
        session = SQLiteSession(str(session_path))
        session.set_dc(self.dc_id, DC_IP, 443)
        session.auth_key = key
        session.save()
        session.close()
        self.accounts[phone].auth_keys[key.key_id] = "ok"

    def client(self, phone: str, session_path: str | Path, **options: Any) -> TelegramClient:
        """A real TelegramClient on `session_path` (logged in if it has no key yet) whose sender
        is this server."""
        session_path = Path(session_path)
        if not session_path.with_name(session_path.name if session_path.suffix == ".session"
                                      else session_path.name + ".session").exists():
            self.login(phone, session_path)
        client = TelegramClient(str(session_path), options.pop("api_id", API_ID), options.pop("api_hash", API_HASH),
                                **options)
        old = client._sender
        client._sender = FakeSender(self, old.auth_key, loggers=client._log, updates_queue=client._updates_queue,
                                    auto_reconnect_callback=old._auto_reconnect_callback)
        return client

    def factory(self, **overrides: Any):
        """A client factory for `accounts.AccountRegistry`: the production options
        (`sessions.client_options`), with `overrides`, on this server."""
        from sessions import client_options

        def make(account: Any, settings: Any) -> TelegramClient:
            options = client_options(settings) | overrides
            return self.client(account.phone, account.session_path, api_id=settings.tg_api_id or API_ID,
                               api_hash=API_HASH, **options)
        return make

    # --- internals: messages ----------------------------------------------------------------------

    def _chat_for(self, phone: str | None, marked: int) -> Chat:
        if marked > 0:
            if phone is None:
                raise KeyError("a private chat needs the account whose chat it is")
            return self.accounts[phone].private[marked]
        return self.chats[marked]

    @staticmethod
    def _messages(chat: Chat, phone: str | None) -> dict[int, Msg]:
        if chat.kind == "group":
            return chat.messages.setdefault(phone, {})
        if chat.kind == "user":
            return chat.messages.setdefault(chat.owner, {})
        return chat.messages

    def _append(self, chat: Chat, phones: set[str], fields: dict, deliver: bool, *,
                posted_by: str | None = None) -> dict[str, int]:
        """Store a new message; returns {phone: its id for that account} (one id for channels)."""
        ids: dict[str, int] = {}
        if not chat.per_account:
            message = Msg(chat.next_id, posted_by=posted_by, **fields)
            chat.next_id += 1
            chat.messages[message.id] = message
            chat.pts += 1
            chat.pts_log.append((chat.pts, message.id))
            for phone in chat.members:
                ids[phone] = message.id
            if deliver:
                for phone in chat.members:
                    self._push(phone, self._channel_update(phone, chat, message))
            return ids or {"": message.id}
        for phone in sorted(phones):
            account = self.accounts[phone]
            message = Msg(account.next_id, posted_by=posted_by, **fields)
            account.next_id += 1
            self._messages(chat, phone)[message.id] = message
            ids[phone] = message.id
            if deliver:
                account.pts += 1
                account.pts_log.append((account.pts, chat.marked, message.id))
                self._push(phone, types.Updates(
                    updates=[types.UpdateNewMessage(self._message(phone, chat, message), account.pts, 1)],
                    users=self._users(phone, chat), chats=self._chats(phone, chat), date=_now(), seq=0))
        return ids

    def _channel_update(self, phone: str, chat: Chat, message: Msg, *, random_id: int | None = None):
        updates = [types.UpdateNewChannelMessage(self._message(phone, chat, message), chat.pts, 1)]
        if random_id is not None:
            updates.insert(0, types.UpdateMessageID(message.id, random_id))
        return types.Updates(updates=updates, users=self._users(phone, chat), chats=self._chats(phone, chat),
                             date=_now(), seq=0)

    def _push(self, phone: str, updates: Any) -> None:
        for sender in list(self.senders.get(phone, ())):
            sender.push(updates)

    # --- internals: TL objects as one account sees them -------------------------------------------

    def access_hash(self, phone: str, kind: str, raw_id: int) -> int:
        return _hash64("access", phone, kind, raw_id)

    def file_reference(self, phone: str, media: Media) -> bytes:
        return hashlib.blake2b(f"{phone}:{media.id}:{media.generation}".encode(), digest_size=16).digest()

    def _user(self, phone: str, user_id: int):
        user = self.users[user_id]
        me = self.accounts[phone].user_id == user_id
        return types.User(id=user_id, is_self=me or None, access_hash=self.access_hash(phone, "user", user_id),
                          first_name=user["first_name"], username=user["username"],
                          phone=user["phone"] if me else None)

    def _chat_object(self, phone: str, chat: Chat):
        if chat.kind == "group":
            migrated = None
            if chat.migrated_to is not None:
                target = self.chats[chat.migrated_to]
                migrated = types.InputChannel(target.raw_id, self.access_hash(phone, "channel", target.raw_id))
            return types.Chat(id=chat.raw_id, title=chat.title, photo=types.ChatPhotoEmpty(),
                              participants_count=len(chat.members), date=_EPOCH, version=1,
                              noforwards=chat.noforwards or None, migrated_to=migrated,
                              deactivated=chat.migrated_to is not None or None)
        return types.Channel(id=chat.raw_id, title=chat.title, photo=types.ChatPhotoEmpty(), date=_EPOCH,
                             broadcast=chat.kind == "channel" or None, megagroup=chat.kind == "supergroup" or None,
                             forum=chat.forum or None, noforwards=chat.noforwards or None,
                             left=phone not in chat.members or None,
                             access_hash=self.access_hash(phone, "channel", chat.raw_id), username=chat.username)

    def _users(self, phone: str, chat: Chat | None = None) -> list:
        ids = {self.accounts[phone].user_id}
        if chat is not None and chat.kind == "user":
            ids.add(chat.raw_id)
        return [self._user(phone, i) for i in sorted(ids)]

    def _chats(self, phone: str, chat: Chat | None) -> list:
        if chat is None or chat.kind == "user":
            return []
        related = [chat.migrated_to] if chat.migrated_to is not None else []
        return [self._chat_object(phone, chat)] + [self._chat_object(phone, self.chats[c]) for c in related]

    def _media_object(self, phone: str, key: str | None):
        if key is None:
            return None
        media = self.media[key]
        access_hash = self.access_hash(phone, media.kind, media.id)
        reference = self.file_reference(phone, media)
        if media.kind == "photo":
            size = types.PhotoSize("y", media.w, media.h, len(media.data))
            return types.MessageMediaPhoto(photo=types.Photo(media.id, access_hash, reference, media.date, [size],
                                                             self.dc_id))
        return types.MessageMediaDocument(document=types.Document(
            media.id, access_hash, reference, media.date, media.mime, len(media.data), self.dc_id,
            list(media.attributes)))

    def _message(self, phone: str, chat: Chat, message: Msg):
        reply_to = None
        if message.topic is not None:
            reply_to = types.MessageReplyHeader(reply_to_msg_id=message.topic, forum_topic=True)
        common = dict(id=message.id, peer_id=chat.peer, date=message.date, reply_to=reply_to,
                      out=(message.posted_by == phone) or None,
                      from_id=types.PeerUser(message.sender) if message.sender else None)
        if message.action is not None:
            return types.MessageService(action=message.action, **common)
        fwd = None
        if message.fwd_from is not None:
            fwd = types.MessageFwdHeader(date=message.date, from_id=utils.resolve_id(message.fwd_from)[1](
                utils.resolve_id(message.fwd_from)[0]))
        return types.Message(message=message.text, media=self._media_object(phone, message.media),
                             noforwards=chat.noforwards or None, grouped_id=message.grouped_id,
                             edit_date=message.edit_date, fwd_from=fwd, **common)

    # --- handling requests ----------------------------------------------------------------------

    def _fault(self, phone: str, name: str) -> Fault | None:
        for fault in self.faults:
            if fault.request == name and fault.phone in (None, phone):
                if fault.after > 0:
                    fault.after -= 1
                    continue
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                return fault
        return None

    async def handle(self, phone: str | None, request: TLObject) -> Any:
        """Answer one request (already read back from its bytes) of account `phone` (None: an
        auth key the server does not know)."""
        async with self._lock:
            return await self._handle(phone, request)

    async def _handle(self, phone: str | None, request: TLObject) -> Any:
        while isinstance(request, (functions.InvokeWithLayerRequest, functions.InitConnectionRequest,
                                   functions.InvokeWithoutUpdatesRequest)):
            request = request.query
        name = type(request).__name__
        if isinstance(request, functions.help.GetConfigRequest):
            return self._config()
        if phone is None:
            raise RpcFailure(401, "AUTH_KEY_UNREGISTERED")
        self.calls.append((phone, name, self.clock()))
        account = self.accounts[phone]
        if account.status in ("revoked", "session_revoked"):
            raise RpcFailure(401, "SESSION_REVOKED" if account.status == "session_revoked" else "AUTH_KEY_UNREGISTERED")
        if account.status == "banned":
            raise RpcFailure(401, "USER_DEACTIVATED_BAN")
        if account.status == "frozen" and name in _WRITES:
            raise RpcFailure(420, "FROZEN_METHOD_INVALID")
        fault = self._fault(phone, name)
        if fault is not None and fault.error == "revoke":   # logged out from another device, now
            self.revoke(phone)
            raise RpcFailure(401, "AUTH_KEY_UNREGISTERED")
        if fault is not None and fault.error == "expire_reference":
            self.expire_references()   # file references expire just before this request
            fault = None
        if fault is not None and not fault.accept:
            raise fault_error(fault.error)
        handler = getattr(self, f"_req_{name}", None)
        if handler is None:
            raise NotImplementedError(f"the fake Telegram server does not answer {name}")
        result = handler(phone, request)
        if fault is not None:   # applied, but the answer never reaches the client
            raise fault_error(fault.error)
        return result

    def _config(self):
        return types.Config(
            date=_now(), expires=_now() + timedelta(hours=1), test_mode=False, this_dc=self.dc_id,
            dc_options=[types.DcOption(self.dc_id, DC_IP, 443)], dc_txt_domain_name="fake", chat_size_max=200,
            megagroup_size_max=200000, forwarded_count_max=100, online_update_period_ms=120000,
            offline_blur_timeout_ms=5000, offline_idle_timeout_ms=30000, online_cloud_timeout_ms=300000,
            notify_cloud_delay_ms=30000, notify_default_delay_ms=1500, push_chat_period_ms=60000,
            push_chat_limit=2, edit_time_limit=172800, revoke_time_limit=172800, revoke_pm_time_limit=172800,
            rating_e_decay=2419200, stickers_recent_limit=200, channels_read_media_period=604800,
            call_receive_timeout_ms=20000, call_ring_timeout_ms=90000, call_connect_timeout_ms=30000,
            call_packet_timeout_ms=10000, me_url_prefix="https://t.me/", caption_length_max=1024,
            message_length_max=4096, webfile_dc_id=4)


# --- the sender -----------------------------------------------------------------------------------


class FakeSender(MTProtoSender):
    """An `MTProtoSender` whose network is a `TelegramServer`: `send` serialises the request,
    reads it back, lets the server answer, and hands the answer back the way the real receive
    loop does (read with `request.read_result`, own updates into the update queue, errors
    through `rpc_message_to_error`)."""

    def __init__(self, server: TelegramServer, auth_key: Any, *, loggers: Any, updates_queue: asyncio.Queue,
                 auto_reconnect_callback: Any = None):
        super().__init__(auth_key, loggers=loggers, updates_queue=updates_queue,
                         auto_reconnect_callback=auto_reconnect_callback)
        self.server = server
        self._pending: set[asyncio.Task] = set()
        self._done: asyncio.Future | None = None
        self._link = asyncio.Event()   # cleared while the connection is dropped (reconnecting)
        self._link.set()

    def drop(self) -> None:
        phone = self.phone
        self._link.clear()
        for senders in self.server.senders.values():
            senders.discard(self)
        self.server.dropped.setdefault(phone, set()).add(self)

    def restore(self) -> None:
        if not self._user_connected:
            return
        self.server.senders.setdefault(self.phone, set()).add(self)
        self._link.set()
        if self._auto_reconnect_callback:
            asyncio.get_running_loop().create_task(self._auto_reconnect_callback())

    @property
    def phone(self) -> str | None:
        key_id = self.auth_key.key_id if self.auth_key and self.auth_key.key else None
        for phone, account in self.server.accounts.items():
            if key_id in account.auth_keys:
                return phone
        return None

    async def connect(self, connection: Any) -> bool:
        if self._user_connected:
            return False
        if self.auth_key.key is None:   # a new session: Telegram makes a key, not logged in
            self.auth_key.key = hashlib.sha256(str(id(self)).encode()).digest() * 8
            if self._auth_key_callback:
                await self._auth_key_callback(self.auth_key)
        self._connection = connection
        self._user_connected = True
        self._done = asyncio.get_running_loop().create_future()
        phone = self.phone
        if phone is not None:
            self.server.senders.setdefault(phone, set()).add(self)
        return True

    def is_connected(self) -> bool:
        return self._user_connected

    async def disconnect(self) -> None:
        if not self._user_connected:
            return
        self._user_connected = False
        for senders in (*self.server.senders.values(), *self.server.dropped.values()):
            senders.discard(self)
        for task in list(self._pending):
            task.cancel()
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    @property
    def disconnected(self):
        if self._done is None:
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future
        return asyncio.shield(self._done)

    def send(self, request: Any, ordered: bool = False):
        if not self._user_connected:
            raise ConnectionError("Cannot send requests while disconnected")
        if utils.is_list_like(request):
            return [self.send(r) for r in request]
        data = bytes(request)       # what would go on the wire; a bad request fails here
        task = asyncio.get_running_loop().create_task(self._answer(request, data))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def _answer(self, request: Any, data: bytes) -> Any:
        await asyncio.sleep(0)      # an answer is never synchronous
        await self._link.wait()     # a dropped connection: sent again once reconnected
        received = BinaryReader(data).tgread_object()
        try:
            result = await self.server.handle(self.phone, received)
        except RpcFailure as exc:
            raise errors.rpc_message_to_error(types.RpcError(exc.code, exc.message), request) from None
        except _Hang:
            await asyncio.Event().wait()
        body = encode_result(result)
        result = request.read_result(BinaryReader(body))
        self._store_own_updates(result)
        return result

    def push(self, updates: Any) -> None:
        """An update Telegram sends on its own (read back from its bytes, like the real one)."""
        if self._user_connected:
            self._updates_queue.put_nowait(BinaryReader(bytes(updates)).tgread_object())
