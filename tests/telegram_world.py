"""The state of the fake Telegram server (tests/telegram_server.py): its records, its errors.

Kept apart so that the server (building and reading a world, the sender beneath the client)
and the request handlers (tests/telegram_requests.py) share them without importing each other.
"""

from __future__ import annotations

import hashlib
import logging
import re
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from telethon import errors, types, utils

logger = logging.getLogger("telegram_server")

DC_ID = 2
DC_IP = "149.154.167.51"
API_ID = 12345
API_HASH = "0123456789abcdef0123456789abcdef"
ICON_COLOR = 0x6FB9F0
DELETE_MAX = 100        # ids per messages.deleteMessages / channels.deleteMessages
_EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)
_BOOL_TRUE, _BOOL_FALSE, _VECTOR = 0x997275B5, 0xBC799737, 0x1CB5C415
_WRITES = {"SendMediaRequest", "SendMessageRequest", "SendMultiMediaRequest", "CreateForumTopicRequest",
           "EditForumTopicRequest", "EditMessageRequest", "DeleteMessagesRequest", "ForwardMessagesRequest",
           "JoinChannelRequest", "ImportChatInviteRequest", "SaveFilePartRequest", "SaveBigFilePartRequest"}


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _hash64(*parts: object) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True) or 1



# --- the world ------------------------------------------------------------------------------------


@dataclass
class Msg:
    id: int
    date: datetime
    text: str = ""
    media: str | None = None          # a media key of TelegramServer.media
    topic: int | None = None          # forum topic (id of its service message)
    action: Any = None                # a MessageAction for service messages
    grouped_id: int | None = None
    fwd_from: int | None = None       # marked id of the chat it was forwarded from
    sender: int | None = None         # user id
    deleted: bool = False
    edit_date: datetime | None = None
    posted_by: str | None = None      # phone of the account that sent it (hub posts)
    via: str | None = None            # "reference" | "upload" for media the accounts sent


@dataclass
class Chat:
    kind: str                          # channel | supergroup | group | user
    raw_id: int
    title: str
    username: str | None = None
    noforwards: bool = False
    forum: bool = False
    members: set[str] = field(default_factory=set)
    admins: set[str] = field(default_factory=set)
    # channels/supergroups: {id: Msg}; basic groups and private chats: {phone: {id: Msg}}
    messages: dict = field(default_factory=dict)
    next_id: int = 1                   # channels only
    pts: int = 1                       # channels only
    pts_log: list = field(default_factory=list)   # channels: [(pts, message id)]
    topics: dict[int, dict] = field(default_factory=dict)
    random_ids: set[int] = field(default_factory=set)
    migrated_to: int | None = None     # basic groups: the marked id of the supergroup it became
    migrated_from: int | None = None   # supergroups: the marked id of the basic group it was
    owner: str | None = None           # private chats: the account whose chat it is

    @property
    def marked(self) -> int:
        return utils.get_peer_id(self.peer)

    @property
    def peer(self):
        if self.kind in ("channel", "supergroup"):
            return types.PeerChannel(self.raw_id)
        if self.kind == "group":
            return types.PeerChat(self.raw_id)
        return types.PeerUser(self.raw_id)

    @property
    def per_account(self) -> bool:
        return self.kind in ("group", "user")


@dataclass
class Account:
    phone: str
    user_id: int
    first_name: str
    username: str | None = None
    auth_keys: dict[int, str] = field(default_factory=dict)   # auth key id -> "ok" | "revoked"
    status: str = "ok"                 # ok | revoked | session_revoked | banned | frozen
    next_id: int = 1                   # private chats and basic groups: one counter per account
    pts: int = 1
    pts_log: list = field(default_factory=list)   # [(pts, marked chat id, message id)]
    private: dict[int, Chat] = field(default_factory=dict)    # user id -> its private chat
    uploads: dict[int, dict[int, bytes]] = field(default_factory=dict)


@dataclass
class Media:
    kind: str                          # photo | document
    id: int
    data: bytes
    mime: str = "image/jpeg"
    w: int = 0
    h: int = 0
    attributes: list = field(default_factory=list)
    generation: int = 1                # file references of older generations are expired
    date: datetime = field(default_factory=_now)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Fault:
    request: str
    error: str
    phone: str | None = None
    times: int | None = 1
    accept: bool = False
    after: int = 0                     # let this many matching requests through first


# --- errors -------------------------------------------------------------------------------------


class RpcFailure(Exception):
    """An error answer (rpc_error#2144ca19 error_code:int error_message:string)."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class _Hang(Exception):
    pass


def error_code(message: str) -> int:
    """The code Telegram answers with `message`, from Telethon's table of errors."""
    cls = errors.rpcerrorlist.rpc_errors_dict.get(message)
    if cls is None:
        cls = next((c for pattern, c in errors.rpcerrorlist.rpc_errors_re if re.match(pattern, message)), None)
    for base in (cls.__mro__ if cls else ()):
        code = getattr(base, "code", None)
        if isinstance(code, int):
            return code
    return 400


def fault_error(error: str) -> BaseException:
    """The error a fault names: a Telegram error message (its code from Telethon's table), or
    "<code>:<message>" for an error Telethon has no class for (e.g. "500:INTERNAL",
    "-503:Timeout"), "ConnectionError" or "hang"."""
    coded = re.match(r"^(-?\d+):(.+)$", error)
    if coded:
        return RpcFailure(int(coded.group(1)), coded.group(2))
    if error == "ConnectionError":
        return ConnectionError("fake Telegram: the connection broke")
    if error == "hang":
        return _Hang()
    return RpcFailure(error_code(error), error)



def encode_result(result: Any) -> bytes:
    """The bytes of an answer: a TL object, a Bool, or a vector of TL objects."""
    if isinstance(result, bool):
        return struct.pack("<I", _BOOL_TRUE if result else _BOOL_FALSE)
    if isinstance(result, list):
        return struct.pack("<Ii", _VECTOR, len(result)) + b"".join(bytes(r) for r in result)
    return bytes(result)

