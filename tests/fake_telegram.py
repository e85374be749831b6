"""A fake Telegram for tests: Telethon's client methods that the daemon uses, answering with
Telethon's real TL objects and raising Telethon's real errors, backed by a JSON "world" file.

Superseded by tests/telegram_server.py (a fake Telegram *server* beneath the real
TelegramClient, where Telethon's own `_call`, entity cache, paging, downloads, uploads and
update loop run, and message ids and access hashes are per account as on Telegram). This
method-level fake bypasses all of that: it is kept only for the tests not ported yet; write new
tests on the server (tests/server_harness.py, tests/telegram_wire.py for a daemon subprocess).

Build a world, point clients at it, read back what they did:

    world = FakeWorld.create(tmp_path / "world.json")
    world.add_account("+15550001", first_name="Archivist")
    news = world.add_chat("News", kind="channel", username="news_pics", members=["+15550001"])
    hub = world.add_hub("Faces", members=["+15550001"])
    world.post(news, world.photo(FACES / "barack_obama_01.jpg"), text="hi")
    factory = client_factory(world.path)           # AccountRegistry(..., client_factory=factory)
    ...
    world.topics(hub)            # {topic id: {"title", "closed", "deleted"}}
    world.posts(hub, topic_id)   # [{"id", "text", "media", "via", "sha256", "posted_at"}, …]

Because the world lives in a file (locked while read and written, replaced atomically), a daemon
running as a subprocess (tests/daemon_launcher.py with FA_FAKE_TELEGRAM=<world file>) and the
test process share one Telegram: the test adds messages, the daemon's clients see them, and the
test reads the hub afterwards. Files posted by upload are kept next to the world file
(`<world>.blobs/`).

What is faithful: marked ids, access per account (members; public chats readable by anyone;
an entity unknown to an account cannot be resolved by id), messages fetched in chunks of 100
(new ones show up in a running sweep), file references that expire and are renewed by fetching
the message again, forum topics (ids of their MessageActionTopicCreate service messages),
random_id de-duplication per chat (RandomIdDuplicateError), protected chats
(ChatForwardsRestrictedError on re-sending their media by reference), flood waits absorbed up to
the client's flood_sleep_threshold and raised above it, live updates delivered to the handlers
of online member accounts only (an update sent while an account is offline is lost, like a real
missed update; `post(..., deliver=False)` drops it on purpose).

Faults (`world.fail(...)`) are consumed in order: method is a client method name
("iter_messages", "download_media", "get_messages", "connect", …) or a request class name
("SendMediaRequest", "CreateForumTopicRequest", …); error is a Telethon error class name,
"ConnectionError", "TimeoutError", "ValueError"/"TypeError"/"RuntimeError", "delay" (sleep
`seconds`, then go on), "hang" (never answer) or
"expire_reference" (the media's file reference expires just before the call).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import fcntl
import hashlib
import inspect
import io
import json
import logging
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from telethon import errors, events, types, utils
from telethon.helpers import TotalList
from telethon.tl.types import auth as tl_auth
from telethon.tl.types import messages as tl_messages

logger = logging.getLogger("fake_telegram")

CHUNK = 100
ICON_COLOR = 0x6FB9F0
_EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _error(name: str, seconds: float | None = None, request: Any = None) -> BaseException:
    if name in ("ConnectionError", "OSError"):
        return ConnectionError("fake Telegram: connection lost")
    if name == "TimeoutError":
        return asyncio.TimeoutError()
    if name in ("ValueError", "TypeError", "RuntimeError"):   # what Telethon itself raises at times
        return {"ValueError": ValueError, "TypeError": TypeError, "RuntimeError": RuntimeError}[name](
            "fake Telegram: client-side error")
    cls = getattr(errors, name)
    if "capture" in inspect.signature(cls.__init__).parameters:
        return cls(request=request, capture=int(seconds or 0))
    if cls.__module__.endswith("rpcbaseerrors"):   # ServerError, TimedOutError, …: no fixed message
        return cls(request, f"FAKE_{name.upper()}")
    return cls(request=request)


# --- the world file ------------------------------------------------------------------------------


class FakeWorld:
    """Telegram's state, in a JSON file. Methods that change it lock the file for the change."""

    def __init__(self, path: str | Path, *, clock=None):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.blobs = self.path.with_name(self.path.name + ".blobs")
        self.clock = clock
        self._cache: tuple[tuple[int, int], dict] | None = None

    @classmethod
    def create(cls, path: str | Path, **kwargs: Any) -> FakeWorld:
        world = cls(path, **kwargs)
        world.path.parent.mkdir(parents=True, exist_ok=True)
        world.blobs.mkdir(exist_ok=True)
        with world.change() as state:
            state.clear()
            state.update({"seq": 1000, "accounts": {}, "users": {}, "chats": {}, "media": {},
                          "faults": [], "updates": {}, "downloads": {}, "calls": []})
        return world

    # --- locking -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def change(self):
        """The state, locked for a read-modify-write; written back (atomically) on exit."""
        with open(self.lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = json.loads(self.path.read_text()) if self.path.exists() else {}
                yield state
                tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(state))
                os.replace(tmp, self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> dict:
        """The current state (read-only: do not modify it)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        key = (stat.st_mtime_ns, stat.st_size)
        if self._cache is None or self._cache[0] != key:
            with open(self.lock_path, "a+") as lock:
                fcntl.flock(lock, fcntl.LOCK_SH)
                try:
                    text = self.path.read_text()
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
            self._cache = (key, json.loads(text))
        return self._cache[1]

    @staticmethod
    def _next(state: dict) -> int:
        state["seq"] += 1
        return state["seq"]

    # --- building a world ----------------------------------------------------------------------

    def add_account(self, phone: str, *, first_name: str = "Archivist", last_name: str | None = None,
                    username: str | None = None, code: str = "12345", password: str | None = None,
                    authorized: bool = True) -> int:
        """A Telegram user that the daemon logs in as; returns its user id."""
        with self.change() as state:
            user_id = 700000000 + self._next(state)
            state["accounts"][phone] = {"user_id": user_id, "first_name": first_name, "last_name": last_name,
                                        "username": username, "code": code, "password": password,
                                        "authorized": authorized, "online": True, "seen": []}
            state["users"][str(user_id)] = {"first_name": first_name, "username": username,
                                            "access_hash": user_id * 7 + 1}
            state["updates"][phone] = []
        return user_id

    def add_user(self, first_name: str, *, username: str | None = None) -> int:
        """Another Telegram user (e.g. the other side of a private chat)."""
        with self.change() as state:
            user_id = 800000000 + self._next(state)
            state["users"][str(user_id)] = {"first_name": first_name, "username": username,
                                            "access_hash": user_id * 7 + 1}
        return user_id

    def add_chat(self, title: str, *, kind: str = "supergroup", username: str | None = None,
                 noforwards: bool = False, members: list[str] | tuple = (), admins: list[str] | None = None,
                 forum: bool = False, invite: str | None = None) -> int:
        """A chat ('channel', 'supergroup' or 'group'); returns its marked id."""
        with self.change() as state:
            seq = self._next(state)
            if kind in ("channel", "supergroup"):
                raw = 1500000000 + seq
                marked = utils.get_peer_id(types.PeerChannel(raw))
            elif kind == "group":
                raw = 400000000 + seq
                marked = utils.get_peer_id(types.PeerChat(raw))
            else:
                raise ValueError(f"unknown chat kind {kind!r}")
            state["chats"][str(marked)] = {
                "kind": kind, "raw_id": raw, "access_hash": raw * 13 + 5, "title": title,
                "username": username, "noforwards": noforwards, "forum": forum,
                "members": list(members), "admins": list(admins if admins is not None else members),
                "invite": invite, "next_id": 1, "messages": {}, "topics": {}, "random_ids": [],
                "created": _now().isoformat()}
        return marked

    def add_hub(self, title: str = "Faces hub", *, members: list[str] | tuple = (), admins: list[str] | None = None) -> int:
        """A forum supergroup (the hub); returns its marked id."""
        return self.add_chat(title, kind="supergroup", members=members, admins=admins, forum=True)

    def add_private_chat(self, phone: str, user_id: int) -> int:
        """The private chat of account `phone` with user `user_id`; its marked id is the user id."""
        with self.change() as state:
            user = state["users"][str(user_id)]
            state["chats"][str(user_id)] = {
                "kind": "user", "raw_id": user_id, "access_hash": user["access_hash"],
                "title": user["first_name"], "username": user["username"], "noforwards": False,
                "forum": False, "members": [phone], "admins": [], "invite": None, "next_id": 1,
                "messages": {}, "topics": {}, "random_ids": [], "created": _now().isoformat()}
        return user_id

    def join(self, chat_id: int, phone: str) -> None:
        with self.change() as state:
            chat = state["chats"][str(chat_id)]
            if phone not in chat["members"]:
                chat["members"].append(phone)

    def _media(self, path: str | Path, kind: str, **fields: Any) -> str:
        path = Path(path).resolve()
        size = fields.pop("size", None) or path.stat().st_size
        with self.change() as state:
            media_id = 5000000000000 + self._next(state)
            key = f"{kind}:{media_id}"
            state["media"][key] = {"kind": kind, "id": media_id, "access_hash": media_id * 3 + 11,
                                   "reference": 1, "blob": str(path), "size": size,
                                   "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                   "date": _now().isoformat(), **fields}
        return key

    def photo(self, path: str | Path) -> str:
        """A photo (MessageMediaPhoto) with the bytes of `path`; returns its media key."""
        from PIL import Image
        with Image.open(path) as image:
            w, h = image.size
        return self._media(path, "photo", w=w, h=h, mime="image/jpeg")

    def image_document(self, path: str | Path, *, mime: str | None = None) -> str:
        """An image sent as a file (MessageMediaDocument with an image mime type)."""
        from PIL import Image
        with Image.open(path) as image:
            w, h = image.size
            mime = mime or Image.MIME.get(image.format, "image/jpeg")
        return self._media(path, "document", mime=mime, attributes={
            "filename": Path(path).name, "image_size": [w, h]})

    def video(self, path: str | Path, *, round: bool = False, duration: float = 3.0, w: int = 320,
              h: int = 240, size: int | None = None, mime: str = "video/mp4") -> str:
        """A video, or a round video note (round=True). `size` overrides the reported size."""
        return self._media(path, "document", size=size, mime=mime, attributes={
            "filename": None if round else Path(path).name,
            "video": {"duration": duration, "w": w, "h": h, "round": round}})

    def gif(self, path: str | Path, *, w: int = 320, h: int = 240) -> str:
        """A Telegram "GIF": a silent mp4 animation."""
        return self._media(path, "document", mime="video/mp4", attributes={
            "filename": Path(path).name, "animated": True,
            "video": {"duration": 2.0, "w": w, "h": h, "round": False}})

    def document(self, path: str | Path, *, mime: str = "application/pdf", size: int | None = None) -> str:
        """Any other file (not analysed)."""
        return self._media(path, "document", size=size, mime=mime, attributes={"filename": Path(path).name})

    def post(self, chat_id: int, media: str | None = None, text: str = "", *, deliver: bool = True,
             date: datetime | None = None) -> int:
        """A new message in a chat; live updates go to its online member accounts unless
        `deliver` is False (an update Telegram never sent). Returns the message id."""
        with self.change() as state:
            message_id = _append(state, chat_id, {"text": text, "media": media,
                                                  "date": (date or _now()).isoformat()})
            if deliver:
                _deliver(state, chat_id, message_id)
        return message_id

    def post_many(self, chat_id: int, items: list[tuple[str | None, str]]) -> list[int]:
        """Many old messages at once (history, no live updates): [(media key or None, text), …]."""
        with self.change() as state:
            start = _EPOCH
            return [_append(state, chat_id, {"text": text, "media": media,
                                             "date": (start + timedelta(minutes=i)).isoformat()})
                    for i, (media, text) in enumerate(items)]

    def forward(self, from_chat: int, message_id: int, to_chat: int, *, deliver: bool = True) -> int:
        """Forward a message: the new message carries the same photo or document (same id)."""
        with self.change() as state:
            original = state["chats"][str(from_chat)]["messages"][str(message_id)]
            new_id = _append(state, to_chat, {"text": original["text"], "media": original["media"],
                                              "date": _now().isoformat(), "fwd_from": from_chat})
            if deliver:
                _deliver(state, to_chat, new_id)
        return new_id

    def delete_message(self, chat_id: int, message_id: int) -> None:
        with self.change() as state:
            state["chats"][str(chat_id)]["messages"][str(message_id)]["deleted"] = True

    def delete_topic(self, chat_id: int, topic_id: int) -> None:
        """Delete a forum topic and every message in it (as the Telegram app does)."""
        with self.change() as state:
            chat = state["chats"][str(chat_id)]
            chat["topics"][str(topic_id)]["deleted"] = True
            for message in chat["messages"].values():
                if message.get("topic") == topic_id or message["id"] == topic_id:
                    message["deleted"] = True

    def expire_references(self, media_key: str | None = None) -> None:
        """File references of these media (default: all) expire; a fetched message has new ones."""
        with self.change() as state:
            for key, media in state["media"].items():
                if media_key is None or key == media_key:
                    media["reference"] += 1

    def fail(self, method: str, error: str, *, phone: str | None = None, seconds: float | None = None,
             times: int | None = 1, after: int | None = None, chat: int | None = None,
             accept: bool = False) -> None:
        """Make the next `times` calls of `method` fail (None: every call). `after`: for
        iter_messages, fail after yielding that many messages. `accept`: for send requests, the
        message is posted and then the error is raised (Telegram got it; the answer was lost)."""
        with self.change() as state:
            state["faults"].append({"method": method, "error": error, "phone": phone, "seconds": seconds,
                                    "times": times, "after": after, "chat": chat, "accept": accept})

    def clear_faults(self) -> None:
        with self.change() as state:
            state["faults"] = []

    def set_online(self, phone: str, online: bool) -> None:
        """Take an account's connection away (its calls fail, its updates are lost) or give it back."""
        with self.change() as state:
            state["accounts"][phone]["online"] = online

    # --- reading what happened -----------------------------------------------------------------

    def chat(self, chat_id: int) -> dict:
        return copy.deepcopy(self.read()["chats"][str(chat_id)])

    def topics(self, hub_id: int) -> dict[int, dict]:
        """The hub's topics: {topic id: {"title", "closed", "deleted", "edits"}}."""
        return {int(k): dict(v) for k, v in self.read()["chats"][str(hub_id)]["topics"].items()}

    def live_topics(self, hub_id: int) -> dict[int, dict]:
        return {k: v for k, v in self.topics(hub_id).items() if not v["deleted"]}

    def posts(self, hub_id: int, topic_id: int | None = None) -> list[dict]:
        """Messages with media or text in the hub (not deleted), oldest first, optionally of one topic."""
        state = self.read()
        chat = state["chats"][str(hub_id)]
        found = []
        for message in sorted(chat["messages"].values(), key=lambda m: m["id"]):
            if message.get("deleted") or message.get("service"):
                continue
            if topic_id is not None and message.get("topic") != topic_id:
                continue
            media = state["media"].get(message.get("media") or "", {})
            found.append({"id": message["id"], "topic": message.get("topic"), "text": message["text"],
                          "media": message.get("media"), "via": message.get("via"),
                          "sha256": media.get("sha256"), "posted_at": message.get("posted_at"),
                          "posted_by": message.get("posted_by")})
        return found

    def downloads(self, media_key: str | None = None) -> int:
        """How many times media were downloaded (one key, or all)."""
        counts = self.read()["downloads"]
        return counts.get(media_key, 0) if media_key else sum(counts.values())

    def calls(self, method: str | None = None, phone: str | None = None) -> list[dict]:
        return [c for c in self.read()["calls"] if (method is None or c["method"] == method)
                and (phone is None or c["phone"] == phone)]

    def message_ids(self, chat_id: int) -> list[int]:
        chat = self.read()["chats"][str(chat_id)]
        return sorted(m["id"] for m in chat["messages"].values() if not m.get("deleted"))


def _append(state: dict, chat_id: int, message: dict) -> int:
    chat = state["chats"][str(chat_id)]
    message_id = chat["next_id"]
    chat["next_id"] += 1
    chat["messages"][str(message_id)] = {"id": message_id, "deleted": False, **message}
    return message_id


def _deliver(state: dict, chat_id: int, message_id: int) -> None:
    for phone in state["chats"][str(chat_id)]["members"]:
        account = state["accounts"].get(phone)
        if account and account["online"]:
            state["updates"].setdefault(phone, []).append([chat_id, message_id])


def client_factory(path: str | Path, *, clock=None, poll_interval: float = 0.05):
    """A client factory for `accounts.AccountRegistry` (and init_account.py): fake clients on the
    world in `path`, one per account phone number."""
    def factory(account: Any, settings: Any) -> FakeTelegramClient:
        session = getattr(account, "session_path", None)
        if session is not None and not Path(session).exists():
            # Telethon's SQLiteSession creates the file as the client is made, with the umask's mode.
            Path(session).parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(session, os.O_WRONLY | os.O_CREAT, 0o644))
        return FakeTelegramClient(FakeWorld(path, clock=clock), account.phone,
                                  flood_sleep_threshold=getattr(settings, "flood_sleep_threshold", 60),
                                  poll_interval=poll_interval)
    return factory


# --- the client ----------------------------------------------------------------------------------


class FakeTelegramClient:
    """The subset of `telethon.TelegramClient` the daemon uses, on a `FakeWorld`."""

    def __init__(self, world: FakeWorld, phone: str, *, flood_sleep_threshold: int = 60,
                 poll_interval: float = 0.05):
        self.world = world
        self.phone = phone
        self.flood_sleep_threshold = flood_sleep_threshold
        self.poll_interval = poll_interval
        self._connected = False
        self._handlers: list[tuple[Any, Any]] = []
        self._uploads: dict[int, bytes] = {}
        self._updates_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._code_requested = False

    # --- connection and login ------------------------------------------------------------------

    def _account(self) -> dict:
        return self.world.read()["accounts"][self.phone]

    async def connect(self) -> None:
        await self._fault("connect")
        if not self._account()["online"]:
            raise ConnectionError("fake Telegram: the account is offline")
        self._connected = True
        if self._updates_task is None or self._updates_task.done():
            self._updates_task = asyncio.create_task(self._updates_loop(), name=f"fake-updates-{self.phone}")

    def is_connected(self) -> bool:
        if self._connected and not self._account()["online"]:
            self._connected = False
        return self._connected

    async def disconnect(self) -> None:
        self._connected = False
        task, self._updates_task = self._updates_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def is_user_authorized(self) -> bool:
        self._online()
        return bool(self._account()["authorized"])

    async def get_me(self, input_peer: bool = False):
        self._online()
        await self._fault("get_me")
        account = self._account()
        if not account["authorized"]:
            return None
        user_id = account["user_id"]
        if input_peer:
            return types.InputPeerUser(user_id, user_id * 7 + 1)
        return types.User(id=user_id, is_self=True, access_hash=user_id * 7 + 1, first_name=account["first_name"],
                          last_name=account["last_name"], username=account["username"],
                          phone=self.phone.lstrip("+"))

    async def send_code_request(self, phone: str, *, force_sms: bool = False):
        self._online()
        if phone != self.phone:
            raise errors.PhoneNumberInvalidError(None)
        self._code_requested = True
        return tl_auth.SentCode(type=tl_auth.SentCodeTypeApp(length=5), phone_code_hash="fakehash")

    async def sign_in(self, phone: str | None = None, code: str | int | None = None, *, password: str | None = None,
                      bot_token: str | None = None, phone_code_hash: str | None = None):
        self._online()
        account = self._account()
        if password is not None:
            if password != account["password"]:
                raise errors.PasswordHashInvalidError(None)
        else:
            if not self._code_requested:
                raise errors.PhoneCodeExpiredError(None)
            if str(code) != account["code"]:
                raise errors.PhoneCodeInvalidError(None)
            if account["password"]:
                raise errors.SessionPasswordNeededError(None)
        with self.world.change() as state:
            state["accounts"][self.phone]["authorized"] = True
        return await self.get_me()

    # --- helpers -------------------------------------------------------------------------------

    def _online(self) -> None:
        if not self._connected or not self._account()["online"]:
            self._connected = False
            raise ConnectionError("fake Telegram: not connected")

    async def _fault(self, method: str, chat: int | None = None, request: Any = None,
                     media_key: str | None = None) -> dict | None:
        """Take the next matching fault and act on it; returns an `accept` fault to raise later."""
        with self.world.change() as state:
            state["calls"].append({"phone": self.phone, "method": method, "chat": chat,
                                   "at": self.world.clock() if self.world.clock else None})
            fault = None
            for candidate in state["faults"]:
                if candidate["method"] != method or candidate["times"] == 0 or candidate.get("after") is not None:
                    continue
                if candidate["phone"] not in (None, self.phone) or candidate["chat"] not in (None, chat):
                    continue
                fault = dict(candidate)
                if candidate["times"] is not None:
                    candidate["times"] -= 1
                break
            if fault and fault["error"] == "expire_reference" and media_key in state["media"]:
                state["media"][media_key]["reference"] += 1
        if fault is None or fault["error"] == "expire_reference":
            return None
        if fault.get("accept"):
            return fault
        await self._act(fault, request)
        return None

    async def _act(self, fault: dict, request: Any = None) -> None:
        error, seconds = fault["error"], fault.get("seconds")
        if error == "delay":
            await asyncio.sleep(seconds or 0)
            return
        if error == "hang":
            await asyncio.Event().wait()
        if error in ("FloodWaitError", "FloodPremiumWaitError", "SlowModeWaitError") \
                and (seconds or 0) <= self.flood_sleep_threshold:
            logger.info("fake Telegram: sleeping for %ss on a flood wait (below the threshold)", seconds)
            await asyncio.sleep(seconds or 0)
            return
        raise _error(error, seconds, request)

    def _take_after_fault(self, method: str, chat: int | None) -> dict | None:
        with self.world.change() as state:
            for candidate in state["faults"]:
                if candidate["method"] == method and candidate.get("after") is not None and candidate["times"] != 0 \
                        and candidate["phone"] in (None, self.phone) and candidate["chat"] in (None, chat):
                    if candidate["times"] is not None:
                        candidate["times"] -= 1
                    return dict(candidate)
        return None

    def _marked(self, state: dict, entity: Any) -> int:
        """The marked id of anything that names a chat (or raise like Telethon does)."""
        if isinstance(entity, int):
            return entity
        if isinstance(entity, str):
            text = entity.strip()
            if text.lower() in ("me", "self"):
                return state["accounts"][self.phone]["user_id"]
            name, is_invite = utils.parse_username(text)
            if not name or is_invite:
                raise ValueError(f'Cannot find any entity corresponding to "{entity}"')
            for marked, chat in state["chats"].items():
                if chat["kind"] != "user" and (chat["username"] or "").lower() == name:
                    return int(marked)
            for user_id, user in state["users"].items():
                if (user["username"] or "").lower() == name:
                    return int(user_id)
            raise ValueError(f'No user has "{name}" as username')
        if isinstance(entity, (types.InputPeerSelf, types.InputUserSelf)):
            return state["accounts"][self.phone]["user_id"]
        if isinstance(entity, (types.InputChannel,)):
            return utils.get_peer_id(types.PeerChannel(entity.channel_id))
        try:
            return utils.get_peer_id(entity)
        except TypeError:
            raise ValueError(f"fake Telegram cannot tell which chat {entity!r} is") from None

    def _chat(self, state: dict, marked: int, *, read: bool = True) -> dict:
        chat = state["chats"].get(str(marked))
        if chat is None:
            raise errors.PeerIdInvalidError(None) if marked > 0 else errors.ChannelInvalidError(None)
        if read and not self._can_read(chat):
            raise errors.ChannelPrivateError(None) if chat["kind"] != "group" else errors.ChatIdInvalidError(None)
        return chat

    def _can_read(self, chat: dict) -> bool:
        return self.phone in chat["members"] or (bool(chat["username"]) and chat["kind"] in ("channel", "supergroup"))

    def _knows(self, state: dict, marked: int) -> bool:
        chat = state["chats"].get(str(marked))
        account = state["accounts"][self.phone]
        return bool(chat and (self.phone in chat["members"] or marked in account["seen"]))

    def _entity(self, state: dict, marked: int):
        chat = state["chats"].get(str(marked))
        if chat is None and str(marked) in state["users"]:
            user = state["users"][str(marked)]
            return types.User(id=marked, access_hash=user["access_hash"], first_name=user["first_name"],
                              username=user["username"])
        if chat is None:
            raise ValueError(f"Could not find the input entity for {marked}")
        created = datetime.fromisoformat(chat["created"])
        left = self.phone not in chat["members"]
        if chat["kind"] in ("channel", "supergroup"):
            return types.Channel(id=chat["raw_id"], title=chat["title"], photo=types.ChatPhotoEmpty(), date=created,
                                 access_hash=chat["access_hash"], username=chat["username"],
                                 broadcast=chat["kind"] == "channel", megagroup=chat["kind"] == "supergroup",
                                 noforwards=chat["noforwards"], forum=chat["forum"], left=left,
                                 participants_count=len(chat["members"]))
        if chat["kind"] == "group":
            return types.Chat(id=chat["raw_id"], title=chat["title"], photo=types.ChatPhotoEmpty(),
                              participants_count=len(chat["members"]), date=created, version=1,
                              noforwards=chat["noforwards"], left=left)
        user = state["users"][str(marked)]
        return types.User(id=marked, access_hash=user["access_hash"], first_name=user["first_name"],
                          username=user["username"])

    def _input_peer(self, state: dict, marked: int):
        chat = state["chats"].get(str(marked))
        if chat is None or chat["kind"] == "user":
            user = state["users"][str(marked)]
            return types.InputPeerUser(marked, user["access_hash"])
        if chat["kind"] == "group":
            return types.InputPeerChat(chat["raw_id"])
        return types.InputPeerChannel(chat["raw_id"], chat["access_hash"])

    def _peer(self, state: dict, marked: int):
        chat = state["chats"].get(str(marked))
        if chat is None or chat["kind"] == "user":
            return types.PeerUser(marked)
        if chat["kind"] == "group":
            return types.PeerChat(chat["raw_id"])
        return types.PeerChannel(chat["raw_id"])

    def _media_object(self, state: dict, key: str | None):
        if not key:
            return None
        media = state["media"][key]
        reference = hashlib.sha256(f"{key}:{media['reference']}".encode()).digest()[:16]
        date = datetime.fromisoformat(media["date"])
        if media["kind"] == "photo":
            photo = types.Photo(id=media["id"], access_hash=media["access_hash"], file_reference=reference,
                                date=date, sizes=[types.PhotoSize(type="y", w=media["w"], h=media["h"],
                                                                  size=media["size"])], dc_id=2)
            return types.MessageMediaPhoto(photo=photo)
        attributes = []
        spec = media.get("attributes") or {}
        video = spec.get("video")
        if video:
            attributes.append(types.DocumentAttributeVideo(duration=video["duration"], w=video["w"], h=video["h"],
                                                           round_message=video["round"] or None,
                                                           supports_streaming=True))
        if spec.get("animated"):
            attributes.append(types.DocumentAttributeAnimated())
        if spec.get("image_size"):
            attributes.append(types.DocumentAttributeImageSize(*spec["image_size"]))
        if spec.get("filename"):
            attributes.append(types.DocumentAttributeFilename(spec["filename"]))
        document = types.Document(id=media["id"], access_hash=media["access_hash"], file_reference=reference,
                                  date=date, mime_type=media["mime"], size=media["size"], dc_id=2,
                                  attributes=attributes)
        return types.MessageMediaDocument(document=document, video=bool(video and not video["round"]) or None,
                                          round=bool(video and video["round"]) or None)

    def _message(self, state: dict, marked: int, stored: dict):
        chat = state["chats"][str(marked)]
        peer = self._peer(state, marked)
        date = datetime.fromisoformat(stored["date"])
        out = stored.get("posted_by") == self.phone or None
        if stored.get("service"):
            return types.MessageService(id=stored["id"], peer_id=peer, date=date, out=out,
                                        action=types.MessageActionTopicCreate(title=stored["service"]["title"],
                                                                              icon_color=ICON_COLOR))
        reply_to = None
        if stored.get("topic"):
            reply_to = types.MessageReplyHeader(forum_topic=True, reply_to_msg_id=stored["topic"])
        return types.Message(id=stored["id"], peer_id=peer, date=date, message=stored["text"], out=out,
                             media=self._media_object(state, stored.get("media")),
                             noforwards=chat["noforwards"] or None, reply_to=reply_to,
                             post=chat["kind"] == "channel" or None)

    # --- entities ------------------------------------------------------------------------------

    async def get_entity(self, entity: Any):
        self._online()
        await self._fault("get_entity")
        with self.world.change() as state:
            if isinstance(entity, (list, tuple)):
                raise NotImplementedError("fake get_entity takes one entity")
            marked = self._marked(state, entity)
            by_name = isinstance(entity, str)
            if not by_name and not self._knows(state, marked) and str(marked) not in state["users"]:
                raise ValueError(f"Could not find the input entity for {entity!r}. Please read "
                                 f"https://docs.telethon.dev/en/stable/concepts/entities.html")
            if by_name and marked not in state["accounts"][self.phone]["seen"]:
                state["accounts"][self.phone]["seen"].append(marked)
            return self._entity(state, marked)

    async def get_input_entity(self, peer: Any):
        self._online()
        state = self.world.read()
        if isinstance(peer, (types.InputPeerChannel, types.InputPeerChat, types.InputPeerUser)):
            return peer
        if isinstance(peer, str):
            entity = await self.get_entity(peer)
            return utils.get_input_peer(entity)
        marked = self._marked(state, peer)
        if not self._knows(state, marked) and str(marked) not in state["users"]:
            raise ValueError(f"Could not find the input entity for {peer!r}. Please read "
                             f"https://docs.telethon.dev/en/stable/concepts/entities.html")
        return self._input_peer(state, marked)

    async def get_dialogs(self, limit: int | None = None, **kwargs: Any) -> list:
        self._online()
        await self._fault("get_dialogs")
        state = self.world.read()
        return [self._entity(state, int(marked)) for marked, chat in state["chats"].items()
                if self.phone in chat["members"]]

    # --- messages ------------------------------------------------------------------------------

    def iter_messages(self, entity: Any, limit: float | None = None, *, offset_date: Any = None, offset_id: int = 0,
                      max_id: int = 0, min_id: int = 0, add_offset: int = 0, search: str | None = None,
                      filter: Any = None, from_user: Any = None, wait_time: float | None = None,
                      ids: Any = None, reverse: bool = False, reply_to: int | None = None,
                      scheduled: bool = False):
        return _MessageIter(self, entity, limit=limit, min_id=min_id, max_id=max_id, offset_id=offset_id,
                            ids=ids, reverse=reverse, reply_to=reply_to)

    async def get_messages(self, entity: Any, *args: Any, **kwargs: Any):
        ids = kwargs.get("ids")
        if len(args) == 1 and "limit" not in kwargs:
            kwargs["limit"] = args[0]
        elif "limit" not in kwargs and ids is None:
            kwargs["limit"] = 1
        iterator = self.iter_messages(entity, **kwargs)
        found = TotalList([m async for m in iterator])
        found.total = iterator.total
        if ids is not None and not isinstance(ids, (list, tuple)):
            return found[0] if found else None
        return found

    async def download_media(self, message: Any, file: Any = None, *, thumb: Any = None,
                             progress_callback: Any = None):
        self._online()
        media = getattr(message, "media", message)
        chat = utils.get_peer_id(message.peer_id) if isinstance(message, types.Message) else None
        if isinstance(media, types.MessageMediaPhoto):
            obj, key = media.photo, f"photo:{media.photo.id}"
        elif isinstance(media, types.MessageMediaDocument):
            obj, key = media.document, f"document:{media.document.id}"
        else:
            return None
        await self._fault("download_media", chat, media_key=key)
        with self.world.change() as state:
            stored = state["media"].get(key)
            if stored is None:
                raise errors.FileReferenceInvalidError(None)
            current = hashlib.sha256(f"{key}:{stored['reference']}".encode()).digest()[:16]
            if obj.file_reference != current:
                raise errors.FileReferenceExpiredError(None)
            if not self._sees_media(state, key):
                raise errors.FileReferenceInvalidError(None)
            state["downloads"][key] = state["downloads"].get(key, 0) + 1
            blob = Path(stored["blob"])
        data = await asyncio.to_thread(blob.read_bytes)
        if file is bytes:
            return data
        if file is None:
            file = Path.cwd() / f"{key.replace(':', '_')}{'.jpg' if key.startswith('photo') else ''}"
        if hasattr(file, "write"):
            file.write(data)
            return file
        path = Path(file)
        if not path.suffix:
            path = path.with_suffix(".jpg" if key.startswith("photo") else ".bin")
        await asyncio.to_thread(path.write_bytes, data)
        return str(path)

    def _sees_media(self, state: dict, key: str) -> bool:
        return any(self._can_read(chat) and any(m.get("media") == key and not m.get("deleted")
                                                for m in chat["messages"].values())
                   for chat in state["chats"].values())

    async def upload_file(self, file: Any, *, part_size_kb: float | None = None, file_size: int | None = None,
                          file_name: str | None = None, use_cache: Any = None, key: bytes | None = None,
                          iv: bytes | None = None, progress_callback: Any = None):
        self._online()
        await self._fault("upload_file")
        if isinstance(file, (bytes, bytearray)):
            data, name = bytes(file), file_name or "upload.bin"
        elif isinstance(file, (str, Path)):
            data = await asyncio.to_thread(Path(file).read_bytes)
            name = file_name or Path(file).name
        elif isinstance(file, io.IOBase):
            data, name = file.read(), file_name or getattr(file, "name", "upload.bin")
        else:
            raise TypeError(f"fake upload_file cannot read {type(file).__name__}")
        file_id = int.from_bytes(os.urandom(7), "big")
        self._uploads[file_id] = data
        return types.InputFile(id=file_id, parts=max(1, len(data) // (512 * 1024) + 1), name=os.path.basename(str(name)),
                               md5_checksum=hashlib.md5(data).hexdigest())

    # --- raw requests --------------------------------------------------------------------------

    async def __call__(self, request: Any, ordered: bool = False, flood_sleep_threshold: int | None = None):
        self._online()
        name = type(request).__name__
        handler = getattr(self, f"_req_{name}", None)
        if handler is None:
            raise NotImplementedError(f"the fake Telegram does not implement {name}")
        peer = getattr(request, "peer", None) or getattr(request, "channel", None)
        chat = None
        if peer is not None:
            with contextlib.suppress(Exception):
                chat = self._marked(self.world.read(), peer)
        media = getattr(request, "media", None)
        media_key = None
        if isinstance(media, (types.InputMediaPhoto, types.InputMediaDocument)):
            media_key = f"{'photo' if isinstance(media, types.InputMediaPhoto) else 'document'}:{media.id.id}"
        accepted = await self._fault(name, chat, request, media_key=media_key)
        result = await handler(request)
        if accepted is not None:   # Telegram did it, but the answer never arrived
            await self._act(accepted, request)
        return result

    def _hub(self, state: dict, request: Any, *, admin: bool = False) -> tuple[int, dict]:
        marked = self._marked(state, request.peer if hasattr(request, "peer") else request.channel)
        chat = self._chat(state, marked)
        if self.phone not in chat["members"]:
            raise errors.ChatWriteForbiddenError(request)
        if admin and self.phone not in chat["admins"]:
            raise errors.ChatAdminRequiredError(request)
        return marked, chat

    def _updates(self, state: dict, marked: int, new: list) -> types.Updates:
        return types.Updates(updates=new, users=[], chats=[self._entity(state, marked)], date=_now(), seq=0)

    def _new_message(self, state: dict, marked: int, stored: dict, random_id: int | None) -> types.Updates:
        message = self._message(state, marked, stored)
        update = (types.UpdateNewChannelMessage(message=message, pts=stored["id"], pts_count=1)
                  if state["chats"][str(marked)]["kind"] in ("channel", "supergroup")
                  else types.UpdateNewMessage(message=message, pts=stored["id"], pts_count=1))
        return self._updates(state, marked, [types.UpdateMessageID(id=stored["id"], random_id=random_id), update])

    def _use_random_id(self, chat: dict, random_id: int | None, request: Any) -> None:
        if random_id is None:
            return
        if str(random_id) in chat["random_ids"]:
            raise errors.RandomIdDuplicateError(request)
        chat["random_ids"].append(str(random_id))

    def _topic(self, chat: dict, reply_to: Any, request: Any) -> int | None:
        if reply_to is None:
            return None
        top = getattr(reply_to, "top_msg_id", None) or reply_to.reply_to_msg_id
        if chat["forum"]:
            topic = chat["topics"].get(str(top))
            if topic is None:
                target = chat["messages"].get(str(top))
                if target is None or target.get("deleted"):
                    raise errors.TopicDeletedError(request)
                return target.get("topic")
            if topic["deleted"]:
                raise errors.TopicDeletedError(request)
            return top
        return None

    def _post(self, state: dict, marked: int, fields: dict) -> dict:
        message_id = _append(state, marked, {"date": _now().isoformat(), "posted_by": self.phone,
                                             "posted_at": self.world.clock() if self.world.clock else None,
                                             **fields})
        return state["chats"][str(marked)]["messages"][str(message_id)]

    async def _req_CreateForumTopicRequest(self, request: Any):
        with self.world.change() as state:
            marked, chat = self._hub(state, request, admin=True)
            if not chat["forum"]:
                raise errors.ChannelForumMissingError(request)
            if not request.title or len(request.title.encode("utf-8")) > 128:
                raise errors.TitleInvalidError(request)
            self._use_random_id(chat, request.random_id, request)
            stored = self._post(state, marked, {"text": "", "service": {"title": request.title}})
            chat["topics"][str(stored["id"])] = {"title": request.title, "closed": False, "deleted": False,
                                                 "edits": 0, "created_by": self.phone}
            return self._new_message(state, marked, stored, request.random_id)

    async def _req_EditForumTopicRequest(self, request: Any):
        with self.world.change() as state:
            marked, chat = self._hub(state, request, admin=True)
            topic = chat["topics"].get(str(request.topic_id))
            if topic is None or topic["deleted"]:
                raise errors.TopicDeletedError(request)
            changed = False
            if request.title is not None:
                if not request.title or len(request.title.encode("utf-8")) > 128:
                    raise errors.TitleInvalidError(request)
                changed |= topic["title"] != request.title
                topic["title"] = request.title
            if request.closed is not None:
                changed |= topic["closed"] != request.closed
                topic["closed"] = request.closed
            if not changed:
                raise errors.BadRequestError(request, "TOPIC_NOT_MODIFIED")
            topic["edits"] += 1
            return self._updates(state, marked, [])

    async def _req_GetForumTopicsRequest(self, request: Any):
        state = self.world.read()
        marked = self._marked(state, request.peer)
        chat = self._chat(state, marked)
        query = (request.q or "").lower()
        topics = []
        for topic_id, topic in sorted(chat["topics"].items(), key=lambda kv: -int(kv[0])):
            if topic["deleted"] or query not in topic["title"].lower():
                continue
            topics.append(types.ForumTopic(
                id=int(topic_id), date=_now(), peer=self._peer(state, marked), title=topic["title"],
                icon_color=ICON_COLOR, top_message=int(topic_id), read_inbox_max_id=0, read_outbox_max_id=0,
                unread_count=0, unread_mentions_count=0, unread_reactions_count=0, unread_poll_votes_count=0,
                from_id=types.PeerUser(state["accounts"][self.phone]["user_id"]),
                notify_settings=types.PeerNotifySettings(), closed=topic["closed"] or None))
        return tl_messages.ForumTopics(count=len(topics), topics=topics[:request.limit], messages=[], chats=[],
                                       users=[], pts=0)

    async def _req_SendMediaRequest(self, request: Any):
        data = None
        if isinstance(request.media, (types.InputMediaUploadedPhoto, types.InputMediaUploadedDocument)):
            data = self._uploads.get(request.media.file.id)
            if data is None:   # uploaded through another client (connection): Telegram knows no such file
                raise errors.MediaEmptyError(request)
        with self.world.change() as state:
            marked, chat = self._hub(state, request)
            topic = self._topic(chat, request.reply_to, request)
            key, via = self._input_media(state, request.media, data, request)
            self._use_random_id(chat, request.random_id, request)
            stored = self._post(state, marked, {"text": request.message, "media": key, "via": via, "topic": topic})
            return self._new_message(state, marked, stored, request.random_id)

    async def _req_SendMessageRequest(self, request: Any):
        with self.world.change() as state:
            marked, chat = self._hub(state, request)
            topic = self._topic(chat, request.reply_to, request)
            self._use_random_id(chat, request.random_id, request)
            stored = self._post(state, marked, {"text": request.message, "media": None, "topic": topic})
            return self._new_message(state, marked, stored, request.random_id)

    async def _req_EditMessageRequest(self, request: Any):
        data = None
        if isinstance(request.media, (types.InputMediaUploadedPhoto, types.InputMediaUploadedDocument)):
            data = self._uploads.get(request.media.file.id)
        with self.world.change() as state:
            marked, chat = self._hub(state, request)
            stored = chat["messages"].get(str(request.id))
            if stored is None or stored.get("deleted"):
                raise errors.MessageIdInvalidError(request)
            if request.media is not None:
                stored["media"], stored["via"] = self._input_media(state, request.media, data, request)
                stored["edited"] = stored.get("edited", 0) + 1
            if request.message is not None:
                stored["text"] = request.message
            message = self._message(state, marked, stored)
            return self._updates(state, marked, [types.UpdateEditChannelMessage(message=message, pts=1, pts_count=1)])

    def _input_media(self, state: dict, media: Any, data: bytes | None, request: Any) -> tuple[str, str]:
        if isinstance(media, (types.InputMediaPhoto, types.InputMediaDocument)):
            kind = "photo" if isinstance(media, types.InputMediaPhoto) else "document"
            key = f"{kind}:{media.id.id}"
            stored = state["media"].get(key)
            if stored is None or media.id.access_hash != stored["access_hash"] or not self._sees_media(state, key):
                raise errors.MediaEmptyError(request)
            current = hashlib.sha256(f"{key}:{stored['reference']}".encode()).digest()[:16]
            if media.id.file_reference != current:
                raise errors.FileReferenceExpiredError(request)
            readable = [c for c in state["chats"].values() if self._can_read(c)
                        and any(m.get("media") == key and not m.get("deleted") for m in c["messages"].values())]
            if readable and all(c["noforwards"] for c in readable):
                raise errors.ChatForwardsRestrictedError(request)
            return key, "reference"
        if isinstance(media, types.InputMediaUploadedPhoto):
            return self._store_upload(state, "photo", data, mime="image/jpeg"), "upload"
        if isinstance(media, types.InputMediaUploadedDocument):
            spec: dict[str, Any] = {}
            for attribute in media.attributes or []:
                if isinstance(attribute, types.DocumentAttributeVideo):
                    spec["video"] = {"duration": attribute.duration, "w": attribute.w, "h": attribute.h,
                                     "round": bool(attribute.round_message)}
                elif isinstance(attribute, types.DocumentAttributeAnimated):
                    spec["animated"] = True
                elif isinstance(attribute, types.DocumentAttributeFilename):
                    spec["filename"] = attribute.file_name
            return self._store_upload(state, "document", data, mime=media.mime_type, attributes=spec), "upload"
        raise NotImplementedError(f"the fake Telegram does not take {type(media).__name__}")

    def _store_upload(self, state: dict, kind: str, data: bytes, **fields: Any) -> str:
        media_id = 6000000000000 + FakeWorld._next(state)
        key = f"{kind}:{media_id}"
        self.world.blobs.mkdir(exist_ok=True)
        blob = self.world.blobs / f"{media_id}.bin"
        blob.write_bytes(data)
        w = h = None
        if kind == "photo":
            from PIL import Image
            with Image.open(io.BytesIO(data)) as image:
                w, h = image.size
        state["media"][key] = {"kind": kind, "id": media_id, "access_hash": media_id * 3 + 11, "reference": 1,
                               "blob": str(blob), "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                               "date": _now().isoformat(), "w": w, "h": h, **fields}
        return key

    async def _req_DeleteMessagesRequest(self, request: Any):
        with self.world.change() as state:
            marked, chat = self._hub(state, request)
            for message_id in request.id:
                stored = chat["messages"].get(str(message_id))
                if stored is not None:
                    stored["deleted"] = True
            return tl_messages.AffectedMessages(pts=1, pts_count=len(request.id))

    async def _req_JoinChannelRequest(self, request: Any):
        with self.world.change() as state:
            marked = self._marked(state, request.channel)
            chat = self._chat(state, marked, read=False)
            if not chat["username"] and self.phone not in chat["members"]:
                raise errors.ChannelPrivateError(request)
            if self.phone not in chat["members"]:
                chat["members"].append(self.phone)
            return self._updates(state, marked, [])

    async def _req_CheckChatInviteRequest(self, request: Any):
        state = self.world.read()
        for marked, chat in state["chats"].items():
            if chat["invite"] and chat["invite"] == request.hash:
                if self.phone in chat["members"]:
                    return types.ChatInviteAlready(chat=self._entity(state, int(marked)))
                return types.ChatInvite(title=chat["title"], photo=types.PhotoEmpty(id=0),
                                        participants_count=len(chat["members"]), color=0,
                                        channel=chat["kind"] in ("channel", "supergroup") or None,
                                        broadcast=chat["kind"] == "channel" or None,
                                        megagroup=chat["kind"] == "supergroup" or None)
        raise errors.InviteHashExpiredError(request)

    async def _req_ImportChatInviteRequest(self, request: Any):
        with self.world.change() as state:
            for marked, chat in state["chats"].items():
                if chat["invite"] and chat["invite"] == request.hash:
                    if self.phone in chat["members"]:
                        raise errors.UserAlreadyParticipantError(request)
                    chat["members"].append(self.phone)
                    return self._updates(state, int(marked), [])
        raise errors.InviteHashExpiredError(request)

    # --- live updates --------------------------------------------------------------------------

    def add_event_handler(self, callback: Any, event: Any = None) -> None:
        self._handlers.append((callback, event if event is not None else events.Raw()))

    def remove_event_handler(self, callback: Any, event: Any = None) -> int:
        before = len(self._handlers)
        self._handlers = [(c, e) for c, e in self._handlers if c is not callback
                          or (event is not None and type(e) is not type(event))]
        return before - len(self._handlers)

    def on(self, event: Any):
        def decorator(callback: Any) -> Any:
            self.add_event_handler(callback, event)
            return callback
        return decorator

    async def _updates_loop(self) -> None:
        while self._connected:
            try:
                pending = self.world.read().get("updates", {}).get(self.phone)
                if pending:
                    with self.world.change() as state:
                        taken, state["updates"][self.phone] = state["updates"].get(self.phone, []), []
                        built = []
                        for chat_id, message_id in taken:
                            stored = state["chats"][str(chat_id)]["messages"].get(str(message_id))
                            if stored is None or stored.get("deleted"):
                                continue
                            message = self._message(state, chat_id, stored)
                            kind = state["chats"][str(chat_id)]["kind"]
                            built.append(types.UpdateNewChannelMessage(message, pts=message_id, pts_count=1)
                                         if kind in ("channel", "supergroup")
                                         else types.UpdateNewMessage(message, pts=message_id, pts_count=1))
                    for update in built:
                        await self._dispatch(update)
            except Exception:
                logger.exception("fake Telegram: delivering updates failed")
            await asyncio.sleep(self.poll_interval)

    async def _dispatch(self, update: Any) -> None:
        self_id = self._account()["user_id"]
        for callback, builder in list(self._handlers):
            if isinstance(builder, events.Raw):
                event = update
            else:
                event = builder.build(update, None, self_id)
                if event is None:
                    continue
                if not builder.resolved:
                    await builder.resolve(self)
                passed = builder.filter(event)
                if inspect.isawaitable(passed):
                    passed = await passed
                if not passed:
                    continue
            task = asyncio.create_task(self._run_handler(callback, event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_handler(self, callback: Any, event: Any) -> None:
        try:
            await callback(event)
        except Exception:   # Telethon logs and goes on, so does the fake
            logger.exception("Unhandled exception on %s", getattr(callback, "__name__", callback))


class _MessageIter:
    """`iter_messages`: history in chunks of 100 (each chunk reads the world afresh, so messages
    posted during a long sweep show up, as on Telegram), `.total` after the first chunk."""

    def __init__(self, client: FakeTelegramClient, entity: Any, *, limit: float | None, min_id: int, max_id: int,
                 offset_id: int, ids: Any, reverse: bool, reply_to: int | None):
        self.client = client
        self.entity = entity
        self.limit = float("inf") if limit is None else limit
        self.min_id = min_id
        self.max_id = max_id
        self.offset_id = offset_id
        self.ids = ids
        self.reverse = reverse
        self.reply_to = reply_to
        self.total: int | None = None
        self._buffer: list = []
        self._yielded = 0
        self._cursor: int | None = None
        self._started = False
        self._done = False
        self._marked: int | None = None
        self._after: dict | None = None

    def __aiter__(self) -> _MessageIter:
        return self

    async def _start(self) -> None:
        client = self.client
        client._online()
        state = client.world.read()
        self._marked = client._marked(state, self.entity)
        await client._fault("get_messages" if self.ids is not None else "iter_messages", self._marked)
        state = client.world.read()
        chat = client._chat(state, self._marked)
        self.total = sum(1 for m in chat["messages"].values() if not m.get("deleted"))
        if self.ids is not None:
            wanted = self.ids if isinstance(self.ids, (list, tuple)) else [self.ids]
            self.total = len(wanted)
            for message_id in wanted:
                stored = chat["messages"].get(str(message_id))
                ok = stored is not None and not stored.get("deleted")
                self._buffer.append(client._message(state, self._marked, stored) if ok else None)
            if not isinstance(self.ids, (list, tuple)):
                self._buffer = [m for m in self._buffer if m is not None]
            self._done = True
            return
        if self.limit <= 0:
            self._done = True
            return
        self._after = client._take_after_fault("iter_messages", self._marked)
        self._cursor = self.min_id if self.reverse else (self.offset_id or self.max_id or 0)

    async def _chunk(self) -> None:
        client = self.client
        client._online()
        state = client.world.read()
        chat = client._chat(state, self._marked)
        candidates = []
        for stored in chat["messages"].values():
            message_id = stored["id"]
            if stored.get("deleted"):
                continue
            if self.min_id and message_id <= self.min_id or self.max_id and message_id >= self.max_id:
                continue
            if self.reply_to is not None and stored.get("topic") != self.reply_to:
                continue
            if self.reverse and message_id <= self._cursor:
                continue
            if not self.reverse and self._cursor and message_id >= self._cursor:
                continue
            candidates.append(stored)
        candidates.sort(key=lambda m: m["id"], reverse=not self.reverse)
        chunk = candidates[:CHUNK]
        if not chunk:
            self._done = True
            return
        self._cursor = chunk[-1]["id"]
        self._buffer = [client._message(state, self._marked, stored) for stored in chunk]

    async def __anext__(self):
        if not self._started:
            self._started = True
            await self._start()
        if self._yielded >= self.limit:
            raise StopAsyncIteration
        if not self._buffer:
            if self._done:
                raise StopAsyncIteration
            await self._chunk()
            if not self._buffer:
                raise StopAsyncIteration
        if self._after is not None and self._yielded >= self._after["after"]:
            fault, self._after = self._after, None
            await self.client._act(fault)
        self._yielded += 1
        return self._buffer.pop(0)


# --- a harness for tests of the Telegram side ----------------------------------------------------


class Harness:
    """A fake world with a hub, settings pointing at it, and accounts recorded in the database.

    `await h.add_account(phone)` makes the Telegram user, its telegram_accounts row and
    membership of the hub (the first account added posts to the hub); `await h.watch(account,
    chat)` records a watched chat as an applied add_chat request would; `await h.service()` starts
    a TelegramService on the fake clients.
    """

    def __init__(self, base: Path, pool: Any, *, clock=None, **settings: Any):
        import config

        self.base = Path(base)
        self.pool = pool
        self.world = FakeWorld.create(self.base / "world.json", clock=clock)
        self.hub = self.world.add_hub("Faces hub")
        self.clock = clock
        self.accounts: dict[str, int] = {}
        values = dict(tg_api_id=12345, tg_api_hash="0123456789abcdef0123456789abcdef", hub_group_id=self.hub,
                      data_dir=self.base / "data", flood_sleep_threshold=0, hub_posts_per_minute=60)
        self.settings = config.load_settings(None, **(values | settings))
        self.factory = client_factory(self.world.path, clock=clock)
        self.services: list[Any] = []

    def with_settings(self, **changes: Any) -> Any:
        self.settings = self.settings.model_copy(update=changes)
        return self.settings

    async def add_account(self, phone: str, *, hub_member: bool = True, **fields: Any) -> int:
        self.world.add_account(phone, **fields)
        if hub_member:
            self.world.join(self.hub, phone)
            with self.world.change() as state:
                hub = state["chats"][str(self.hub)]
                hub["admins"] = sorted(set(hub["admins"]) | {phone})
        async with self.pool.connection() as conn:
            row = await (await conn.execute(
                "INSERT INTO telegram_accounts (phone_number, session_file_path) VALUES (%s, %s) RETURNING id",
                (phone, f"{phone.lstrip('+')}.session"))).fetchone()
        self.accounts[phone] = row[0]
        return row[0]

    async def watch(self, account_id: int, chat_id: int) -> int:
        """Record that `account_id` watches `chat_id` (what applying add_chat stores)."""
        chat = self.world.chat(chat_id)
        kind = chat["kind"]
        async with self.pool.connection() as conn:
            row = await (await conn.execute(
                """INSERT INTO scan_checkpoints (account_id, chat_id, chat_title, chat_username, chat_type, noforwards)
                   VALUES (%s, %s, %s, %s, %s, %s) RETURNING id""",
                (account_id, chat_id, chat["title"], chat["username"], kind, chat["noforwards"]))).fetchone()
        return row[0]

    async def service(self, role: str = "all", **tuning: Any) -> Any:
        """A started TelegramService of `role` on the fake clients (closed by `close()`)."""
        from telegram_client import TelegramService, TelegramTuning

        values = dict(sweep_poll=0.1, watched_refresh=0.1, account_check=0.2, actions_poll=0.1, uploads_poll=0.1)
        service = TelegramService(self.settings, self.pool, role=role, client_factory=self.factory,
                                  tuning=TelegramTuning(**(values | tuning)))
        await service.start()
        self.services.append(service)
        return service

    async def close(self) -> None:
        for service in self.services:
            service.stop()
            await service.close()
        self.services.clear()


async def run_components(service: Any) -> tuple[asyncio.Task, Any]:
    """Run a service's components in the background; returns (task, stop) for the test."""
    async def runner() -> None:
        async with asyncio.TaskGroup() as tg:
            for name, run, _ in service.components():
                tg.create_task(run(), name=name)
    task = asyncio.create_task(runner())

    async def stop() -> None:
        service.stop()
        await asyncio.wait_for(task, 10)
    return task, stop


async def eventually(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Wait until `predicate()` (sync or async) is truthy; return its value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)
