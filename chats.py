"""Watched chats: resolving an operator's "watch this chat" request with the account's own client.

`add_chat.py` and the dashboard hold no Telegram client (one session, one process), so they
record an `add_chat` request (dashboard_actions); the daemon applies it here with the client of
the account named in it: the chat is resolved (a @username, a t.me link, an invite link, or a
numeric id the account knows), joined if the account is not in it yet (live updates only come
for chats one is in), and recorded in scan_checkpoints with its marked id, title, @username,
kind and protection (noforwards). The next sweep then reads its whole history.

`remove_chat`, `pause_chat` and `resume_chat` only change the chat's state in the database.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg.rows import dict_row
from telethon import errors, functions, types, utils

from database import queries
from telegram_actions import CHAT_ACTIONS, ActionFailed

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from accounts import AccountRegistry
    from config import Settings

logger = logging.getLogger(__name__)

_HOST = r"(?:https?://)?(?:www\.)?(?:t|telegram)\.(?:me|dog)/"
_PRIVATE_LINK = re.compile(rf"^{_HOST}c/(\d+)(?:/\d+)*/?$", re.IGNORECASE)
_INVITE_LINK = re.compile(rf"^(?:{_HOST}(?:\+|joinchat/)|tg://join\?invite=)([\w-]+)/?$", re.IGNORECASE)
_PUBLIC_LINK = re.compile(rf"^(?:{_HOST}(?:s/)?@?|tg://resolve\?domain=|@)?([A-Za-z]\w{{3,31}})(?:/\d+)*/?$",
                          re.IGNORECASE)
_RESERVED = {"joinchat", "addstickers", "share", "proxy", "socks", "iv", "login", "addlist"}
STATE_OF_ACTION = {"remove_chat": "removed", "pause_chat": "paused", "resume_chat": "active"}


@dataclass(frozen=True)
class ChatRef:
    """What the operator typed, understood: a username, an invite hash, or a marked chat id."""

    kind: str         # 'username' | 'invite' | 'id'
    value: Any        # str for username and invite, int for id
    text: str

    def describe(self) -> str:
        return {"username": f"@{self.value}", "invite": "an invite link", "id": f"chat {self.value}"}[self.kind]


def parse_chat_identifier(text: str) -> ChatRef:
    """Understand a chat given as @username, t.me link, invite link or numeric (marked) id.
    Raises ValueError with what is accepted."""
    raw = (text or "").strip()
    if not raw:
        raise ValueError("no chat given")
    if re.fullmatch(r"-?\d+", raw):
        return ChatRef("id", int(raw), raw)
    if match := _PRIVATE_LINK.match(raw):
        return ChatRef("id", utils.get_peer_id(types.PeerChannel(int(match.group(1)))), raw)
    if match := _INVITE_LINK.match(raw):
        return ChatRef("invite", match.group(1), raw)
    match = _PUBLIC_LINK.match(raw)
    if match and match.group(1).lower() not in _RESERVED and utils.VALID_USERNAME_RE.match(match.group(1)):
        return ChatRef("username", match.group(1).lower(), raw)
    raise ValueError(f"{raw!r} is not a chat: give @username, a t.me/… link, an invite link "
                     f"(t.me/+… or t.me/joinchat/…) or a numeric id such as -1001234567890")


@dataclass(frozen=True)
class ChatInfo:
    chat_id: int
    title: str
    username: str | None
    chat_type: str
    noforwards: bool


def describe_entity(entity: Any) -> ChatInfo:
    """Marked id, title, @username, kind and protection of a resolved chat."""
    if isinstance(entity, (types.ChannelForbidden, types.ChatForbidden)):
        raise ActionFailed(f"the account cannot access «{entity.title}» (banned or kicked)")
    username = getattr(entity, "username", None)
    if not username:
        username = next((u.username for u in getattr(entity, "usernames", None) or [] if u.active), None)
    if isinstance(entity, types.Channel):
        kind = "channel" if entity.broadcast else "supergroup"
    elif isinstance(entity, types.Chat):
        kind = "group"
    elif isinstance(entity, types.User):
        kind = "user"
    else:
        raise ActionFailed(f"unsupported kind of chat: {type(entity).__name__}")
    title = utils.get_display_name(entity) or str(utils.get_peer_id(entity))
    return ChatInfo(utils.get_peer_id(entity), title, username, kind, bool(getattr(entity, "noforwards", False)))


class ChatManager:
    """Applies chat requests (add, remove, pause, resume) for the accounts this process holds."""

    kinds = CHAT_ACTIONS

    def __init__(self, registry: AccountRegistry, pool: AsyncConnectionPool, settings: Settings, *,
                 on_change: Callable[[int, int], None] | None = None):
        self.registry = registry
        self.pool = pool
        self.settings = settings
        self.on_change = on_change

    def _account(self, action: dict[str, Any]) -> int | None:
        account = (action.get("payload") or {}).get("account_id")
        if account is None and action["action"] == "add_chat":
            held = self.registry.account_ids()
            return held[0] if held else None
        return int(account) if account is not None else None

    def account_for(self, action: dict[str, Any]) -> int | None:
        return self._account(action)

    def can_apply(self, action: dict[str, Any]) -> bool:
        if action["action"] != "add_chat":
            return True   # only the database changes
        return self.registry.holds(self._account(action))

    async def apply_action(self, action: dict[str, Any]) -> str:
        payload = action["payload"] or {}
        if action["action"] == "add_chat":
            text = payload.get("chat") or payload.get("chat_identifier") or payload.get("chat_id")
            info = await self.add_chat(self._account(action), str(text) if text is not None else "")
            return f"watching «{info.title}» ({info.chat_id})"
        state = STATE_OF_ACTION.get(action["action"])
        if state is None:
            raise ActionFailed(f"unknown chat action {action['action']!r}")
        return await self.set_state(state, payload)

    async def set_state(self, state: str, payload: dict[str, Any]) -> str:
        chat_id = payload.get("chat_id")
        username = None
        if chat_id is None and payload.get("chat"):
            try:
                ref = parse_chat_identifier(str(payload["chat"]))
            except ValueError as exc:
                raise ActionFailed(str(exc)) from None
            chat_id, username = (ref.value, None) if ref.kind == "id" else (None, ref.value)
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(queries.tg_set_chat_state, {
                "state": state, "checkpoint_id": payload.get("checkpoint_id"),
                "account_id": payload.get("account_id"), "chat_id": chat_id, "chat_username": username})
            changed = await cur.fetchall()
        for row in changed:
            self._changed(row["account_id"], row["chat_id"])
        return f"{len(changed)} chat(s) now {state}"

    async def add_chat(self, account_id: int | None, identifier: str) -> ChatInfo:
        """Resolve `identifier` with the account's client and start watching it."""
        try:
            ref = parse_chat_identifier(identifier)
        except ValueError as exc:
            raise ActionFailed(str(exc)) from None
        if account_id is None or not self.registry.holds(account_id):
            raise ActionFailed(f"account {account_id} is not held by this process")
        client = self.registry.client(account_id)
        entity = await self.resolve(client, ref)
        info = describe_entity(entity)
        if self.settings.hub_group_id is not None and info.chat_id == self.settings.hub_group_id:
            raise ActionFailed("that chat is the hub (HUB_GROUP_ID): the daemon never reads its own posts")
        if self.registry.user_id(account_id) == info.chat_id:
            raise ActionFailed("that is the account itself (Saved Messages)")
        async with self.pool.connection() as conn:
            row = await (await conn.execute(queries.tg_upsert_chat, {
                "account_id": account_id, "chat_id": info.chat_id, "chat_title": info.title[:255],
                "chat_username": info.username, "chat_type": info.chat_type,
                "noforwards": info.noforwards})).fetchone()
        logger.info("account %s now watches %s «%s» (%s)%s", account_id, info.chat_type, info.title,
                    info.chat_id, "" if row[1] else " again, from where it stopped")
        self._changed(account_id, info.chat_id)
        return info

    def _changed(self, account_id: int, chat_id: int) -> None:
        if self.on_change is not None:
            self.on_change(account_id, chat_id)

    async def resolve(self, client: Any, ref: ChatRef) -> Any:
        """The chat entity for `ref`, joining it when the account is not in it yet."""
        try:
            if ref.kind == "invite":
                return await self._via_invite(client, ref.value)
            if ref.kind == "id":
                entity = await self._by_id(client, ref.value)
            else:
                entity = await client.get_entity(ref.value)
            if isinstance(entity, types.Chat) and entity.migrated_to is not None:
                entity = await client.get_entity(types.PeerChannel(entity.migrated_to.channel_id))
            if isinstance(entity, types.Channel) and entity.left:
                await client(functions.channels.JoinChannelRequest(entity))
                logger.info("joined «%s» to receive its new messages", entity.title)
            return entity
        except (errors.UsernameNotOccupiedError, errors.UsernameInvalidError) as exc:
            raise ActionFailed(f"no chat is called @{ref.value} ({type(exc).__name__})") from None
        except (errors.ChannelPrivateError, errors.ChatForbiddenError, errors.ChannelInvalidError) as exc:
            raise ActionFailed(f"the account cannot access {ref.describe()} ({type(exc).__name__}): "
                               f"use an invite link") from None
        except errors.InviteRequestSentError:
            raise ActionFailed("a request to join was sent; once an admin approves it, add the chat again") from None
        except errors.ChannelsTooMuchError:
            raise ActionFailed("the account is in too many chats to join another one") from None
        except ValueError as exc:   # Telethon: no such username, or an entity it cannot resolve
            raise ActionFailed(f"cannot find {ref.describe()}: {exc}") from None

    async def _by_id(self, client: Any, chat_id: int) -> Any:
        try:
            return await client.get_entity(chat_id)
        except ValueError:
            await client.get_dialogs()   # fills the entity cache with every chat the account is in
            try:
                return await client.get_entity(chat_id)
            except ValueError:
                raise ActionFailed(f"the account is not in chat {chat_id} (or has never seen it): add it "
                                   f"by @username or invite link instead") from None

    async def _via_invite(self, client: Any, invite_hash: str) -> Any:
        try:
            invite = await client(functions.messages.CheckChatInviteRequest(invite_hash))
        except (errors.InviteHashExpiredError, errors.InviteHashInvalidError, errors.InviteHashEmptyError) as exc:
            raise ActionFailed(f"the invite link is not valid any more ({type(exc).__name__})") from None
        if isinstance(invite, types.ChatInviteAlready):
            return invite.chat
        try:
            result = await client(functions.messages.ImportChatInviteRequest(invite_hash))
        except errors.UserAlreadyParticipantError:
            invite = await client(functions.messages.CheckChatInviteRequest(invite_hash))
            return invite.chat
        chats = getattr(result, "chats", None) or []
        if not chats:
            raise ActionFailed("joined by the invite link, but Telegram did not say which chat it is")
        logger.info("joined «%s» by its invite link", getattr(chats[0], "title", chats[0].id))
        return chats[0]
