"""Finding and joining chats on the fake Telegram server (tests/telegram_server.py): the requests
`chats.py` sends when a chat is added by @username or invite link (`contacts.ResolveUsername`,
`channels.JoinChannel`, `messages.CheckChatInvite`, `messages.ImportChatInvite`), answered as
Telegram does. A mixin of the server, like tests/telegram_requests.py:

    class Server(JoinRequests, TelegramServer): ...
    server = Server()
    club = server.add_chat("Secret club", noforwards=True)
    server.add_invite(club, "AbCdEf123")           # https://t.me/+AbCdEf123
"""

from __future__ import annotations

from typing import Any

from telethon import types
from telethon.tl.types import contacts

from telegram_world import RpcFailure, _now


class JoinRequests:
    def add_invite(self, chat_id: int, invite_hash: str) -> None:
        """An invite link to `chat_id`: https://t.me/+<invite_hash>."""
        self.__dict__.setdefault("invites", {})[invite_hash] = chat_id

    def _joined(self, phone: str, chat) -> Any:
        chat.members.add(phone)
        return types.Updates(updates=[], users=self._users(phone), chats=[self._chat_object(phone, chat)],
                             date=_now(), seq=0)

    def _invited(self, request) -> Any:
        chat_id = self.__dict__.get("invites", {}).get(request.hash)
        if chat_id is None:
            raise RpcFailure(400, "INVITE_HASH_INVALID")
        return self.chats[chat_id]

    def _req_ResolveUsernameRequest(self, phone, request):
        name = request.username.lower()
        for chat in self.chats.values():
            if chat.username and chat.username.lower() == name:
                return contacts.ResolvedPeer(peer=chat.peer, chats=[self._chat_object(phone, chat)],
                                             users=self._users(phone))
        for user_id, user in self.users.items():
            if user["username"] and user["username"].lower() == name:
                return contacts.ResolvedPeer(peer=types.PeerUser(user_id), chats=[],
                                             users=[self._user(phone, user_id)])
        raise RpcFailure(400, "USERNAME_NOT_OCCUPIED")

    def _req_JoinChannelRequest(self, phone, request):
        chat = self._resolve(phone, request.channel)
        if phone in chat.members:
            raise RpcFailure(400, "USER_ALREADY_PARTICIPANT")
        return self._joined(phone, chat)

    def _req_CheckChatInviteRequest(self, phone, request):
        chat = self._invited(request)
        if phone in chat.members:
            return types.ChatInviteAlready(chat=self._chat_object(phone, chat))
        channel = chat.kind in ("channel", "supergroup")
        return types.ChatInvite(title=chat.title, photo=types.PhotoEmpty(0), participants_count=len(chat.members),
                                color=0, channel=channel or None, broadcast=chat.kind == "channel" or None,
                                megagroup=chat.kind == "supergroup" or None)

    def _req_ImportChatInviteRequest(self, phone, request):
        chat = self._invited(request)
        if phone in chat.members:
            raise RpcFailure(400, "USER_ALREADY_PARTICIPANT")
        return self._joined(phone, chat)
