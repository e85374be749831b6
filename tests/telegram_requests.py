"""The request handlers of the fake Telegram server (tests/telegram_server.py): one method
`_req_<TL request class name>(phone, request)` per request the daemon's Telethon sends, answering
as Telegram does (a TL object, True, a list, or `RpcFailure(code, message)`). A mixin of
`TelegramServer`: it reads and changes the server's world (`self.accounts`, `self.chats`, …).
"""

from __future__ import annotations

import io
from typing import Any

from telethon import types, utils
from telethon.tl import functions
from telethon.tl.types import messages as tl_messages
from telethon.tl.types import storage, upload
from telethon.tl.types import updates as tl_updates

from telegram_world import DELETE_MAX, ICON_COLOR, Chat, Media, Msg, RpcFailure, _hash64, _now


class Requests:
    # peers -----------------------------------------------------------------------------------------

    def _resolve(self, phone: str, peer: Any) -> Chat:
        """The chat an input peer names, checking the account's access hash."""
        account = self.accounts[phone]
        if isinstance(peer, (types.InputPeerChannel, types.InputChannel)):
            chat = self.chats.get(utils.get_peer_id(types.PeerChannel(peer.channel_id)))
            if chat is None or peer.access_hash != self.access_hash(phone, "channel", peer.channel_id):
                raise RpcFailure(400, "CHANNEL_INVALID")
            if phone not in chat.members and chat.username is None:
                raise RpcFailure(400, "CHANNEL_PRIVATE")
            return chat
        if isinstance(peer, types.InputPeerChat):
            chat = self.chats.get(utils.get_peer_id(types.PeerChat(peer.chat_id)))
            if chat is None:
                raise RpcFailure(400, "PEER_ID_INVALID")
            if phone not in chat.members:
                raise RpcFailure(403, "CHAT_FORBIDDEN" if False else "CHAT_ID_INVALID")
            return chat
        if isinstance(peer, (types.InputPeerUser, types.InputUser)):
            chat = account.private.get(peer.user_id)
            if chat is None or peer.access_hash != self.access_hash(phone, "user", peer.user_id):
                raise RpcFailure(400, "PEER_ID_INVALID")
            return chat
        raise RpcFailure(400, "PEER_ID_INVALID")

    def _dialog_chats(self, phone: str) -> list[Chat]:
        account = self.accounts[phone]
        return [c for c in self.chats.values() if phone in c.members] + list(account.private.values())

    def _visible(self, chat: Chat, phone: str) -> list[Msg]:
        return sorted((m for m in self._messages(chat, phone).values() if not m.deleted),
                      key=lambda m: m.id, reverse=True)

    def _messages_answer(self, phone: str, chat: Chat, found: list[Msg], count: int):
        objects = [self._message(phone, chat, m) for m in found]
        if chat.per_account:
            return tl_messages.MessagesSlice(count=count, messages=objects, topics=[], chats=self._chats(phone, chat),
                                             users=self._users(phone, chat))
        return tl_messages.ChannelMessages(pts=chat.pts, count=count, messages=objects, topics=[],
                                           chats=self._chats(phone, chat), users=self._users(phone, chat))

    @staticmethod
    def _window(messages: list[Msg], offset_id: int, add_offset: int, limit: int, min_id: int, max_id: int) -> list[Msg]:
        """Telegram's history window over `messages` (newest first)."""
        index = sum(1 for m in messages if m.id >= offset_id) if offset_id else 0
        start = index + add_offset
        end = start + max(0, min(limit, 100))   # the window is cut at both ends, not shifted
        window = messages[max(0, start):max(0, end)]
        return [m for m in window if m.id > min_id and (not max_id or m.id < max_id)]

    # the requests ------------------------------------------------------------------------------

    def _req_GetUsersRequest(self, phone, request):
        found = []
        for user in request.id:
            if isinstance(user, types.InputUserSelf):
                found.append(self._user(phone, self.accounts[phone].user_id))
            elif isinstance(user, types.InputUser) and user.user_id in self.users:
                # A wrong access hash (e.g. 0, as Telethon tries for an uncached user): left out.
                if user.access_hash == self.access_hash(phone, "user", user.user_id):
                    found.append(self._user(phone, user.user_id))
        return found

    def _req_GetStateRequest(self, phone, request):
        return tl_updates.State(pts=self.accounts[phone].pts, qts=0, date=_now(), seq=0, unread_count=0)

    def _req_GetDifferenceRequest(self, phone, request):
        account = self.accounts[phone]
        state = tl_updates.State(pts=account.pts, qts=0, date=_now(), seq=0, unread_count=0)
        missed = [(marked, mid) for pts, marked, mid in account.pts_log if pts > request.pts]
        if not missed:
            return tl_updates.DifferenceEmpty(date=_now(), seq=0)
        new, chats = [], {}
        for marked, mid in missed:
            chat = self._chat_for(phone, marked)
            message = self._messages(chat, phone).get(mid)
            if message is not None and not message.deleted:
                new.append(self._message(phone, chat, message))
                chats[marked] = chat
        return tl_updates.Difference(new_messages=new, new_encrypted_messages=[], other_updates=[],
                                     chats=[o for c in chats.values() for o in self._chats(phone, c)],
                                     users=self._users(phone), state=state)

    def _req_GetChannelDifferenceRequest(self, phone, request):
        chat = self._resolve(phone, request.channel)
        new = [chat.messages[mid] for pts, mid in chat.pts_log if pts > request.pts]
        new = [self._message(phone, chat, m) for m in new if not m.deleted]
        if not new:
            return tl_updates.ChannelDifferenceEmpty(pts=chat.pts, final=True, timeout=30)
        return tl_updates.ChannelDifference(pts=chat.pts, new_messages=new, other_updates=[],
                                            chats=self._chats(phone, chat), users=self._users(phone), final=True)

    def _req_GetDialogsRequest(self, phone, request):
        chats = self._dialog_chats(phone)
        dialogs, top = [], []
        for chat in chats:
            visible = self._visible(chat, phone)
            top_id = visible[0].id if visible else 0
            if visible:
                top.append(self._message(phone, chat, visible[0]))
            dialogs.append(types.Dialog(peer=chat.peer, top_message=top_id, read_inbox_max_id=top_id,
                                        read_outbox_max_id=top_id, unread_count=0, unread_mentions_count=0,
                                        unread_reactions_count=0, unread_poll_votes_count=0,
                                        notify_settings=types.PeerNotifySettings(),
                                        pts=chat.pts if not chat.per_account else None))
        users = {self.accounts[phone].user_id} | {c.raw_id for c in chats if c.kind == "user"}
        return tl_messages.Dialogs(dialogs=dialogs, messages=top,
                                   chats=[self._chat_object(phone, c) for c in chats if c.kind != "user"],
                                   users=[self._user(phone, u) for u in sorted(users)])

    def _req_GetChannelsRequest(self, phone, request):
        return tl_messages.Chats(chats=[self._chat_object(phone, self._resolve(phone, c)) for c in request.id])

    def _req_GetChatsRequest(self, phone, request):
        found = []
        for raw in request.id:
            chat = self.chats.get(utils.get_peer_id(types.PeerChat(raw)))
            if chat is None or phone not in chat.members:
                raise RpcFailure(400, "CHAT_ID_INVALID")
            found.append(self._chat_object(phone, chat))
        return tl_messages.Chats(chats=found)

    def _req_GetFullChannelRequest(self, phone, request):
        chat = self._resolve(phone, request.channel)
        full = types.ChannelFull(
            id=chat.raw_id, about="", read_inbox_max_id=0, read_outbox_max_id=0, unread_count=0,
            chat_photo=types.PhotoEmpty(0), notify_settings=types.PeerNotifySettings(),
            exported_invite=None, bot_info=[], pts=chat.pts, participants_count=len(chat.members),
            migrated_from_chat_id=utils.resolve_id(chat.migrated_from)[0] if chat.migrated_from else None,
            migrated_from_max_id=(max(self._messages(self.chats[chat.migrated_from], phone), default=0)
                                  if chat.migrated_from else None))
        return tl_messages.ChatFull(full_chat=full, chats=self._chats(phone, chat), users=self._users(phone))

    def _req_GetHistoryRequest(self, phone, request):
        chat = self._resolve(phone, request.peer)
        if request.offset_date and not request.offset_id:
            raise NotImplementedError("GetHistory by offset_date")
        visible = self._visible(chat, phone)
        found = self._window(visible, request.offset_id, request.add_offset, request.limit,
                             request.min_id, request.max_id)
        return self._messages_answer(phone, chat, found, len(visible))

    def _req_GetRepliesRequest(self, phone, request):
        chat = self._resolve(phone, request.peer)
        if not chat.forum or request.msg_id not in chat.topics:
            raise RpcFailure(400, "MSG_ID_INVALID")
        if chat.topics[request.msg_id]["deleted"]:
            raise RpcFailure(400, "TOPIC_DELETED")
        visible = [m for m in self._visible(chat, phone) if m.topic == request.msg_id]
        found = self._window(visible, request.offset_id, request.add_offset, request.limit,
                             request.min_id, request.max_id)
        return self._messages_answer(phone, chat, found, len(visible))

    def _get_messages(self, phone, chat, ids):
        messages = self._messages(chat, phone)
        found = []
        for item in ids:
            mid = item.id if isinstance(item, types.InputMessageID) else item
            message = messages.get(mid)
            if message is None or message.deleted:
                found.append(types.MessageEmpty(mid, peer_id=chat.peer))
            else:
                found.append(self._message(phone, chat, message))
        return found

    def _req_GetMessagesRequest(self, phone, request):
        if isinstance(request, functions.channels.GetMessagesRequest):
            chat = self._resolve(phone, request.channel)
            found = self._get_messages(phone, chat, request.id)
            return tl_messages.ChannelMessages(pts=chat.pts, count=len(found), messages=found, topics=[],
                                               chats=self._chats(phone, chat), users=self._users(phone))
        # messages.getMessages: ids of the account's own id space (private chats, basic groups)
        found = []
        chats: dict[int, Chat] = {}
        for item in request.id:
            mid = item.id if isinstance(item, types.InputMessageID) else item
            hit = None
            for chat in self._dialog_chats(phone):
                if chat.per_account and mid in self._messages(chat, phone):
                    hit = chat
                    break
            if hit is None or self._messages(hit, phone)[mid].deleted:
                found.append(types.MessageEmpty(mid))
            else:
                chats[hit.marked] = hit
                found.append(self._message(phone, hit, self._messages(hit, phone)[mid]))
        users = {self.accounts[phone].user_id} | {c.raw_id for c in chats.values() if c.kind == "user"}
        return tl_messages.Messages(messages=found, topics=[],
                                    chats=[self._chat_object(phone, c) for c in chats.values() if c.kind != "user"],
                                    users=[self._user(phone, u) for u in sorted(users)])

    # files -------------------------------------------------------------------------------------

    def _media_for_location(self, phone, location) -> Media:
        kind = "photo" if isinstance(location, types.InputPhotoFileLocation) else "document"
        media = self.media.get(f"{kind}:{location.id}")
        if media is None or location.access_hash != self.access_hash(phone, kind, media.id):
            raise RpcFailure(400, "MEDIA_EMPTY" if media is None else "FILE_ID_INVALID")
        if location.file_reference != self.file_reference(phone, media):
            raise RpcFailure(400, "FILE_REFERENCE_EXPIRED")
        return media

    def _req_GetFileRequest(self, phone, request):
        media = self._media_for_location(phone, request.location)
        chunk = media.data[request.offset:request.offset + request.limit]
        if request.offset + len(chunk) >= len(media.data):
            key = f"{media.kind}:{media.id}"
            self.downloads[key] = self.downloads.get(key, 0) + 1
        return upload.File(type=storage.FileJpeg() if media.kind == "photo" else storage.FilePartial(),
                           mtime=0, bytes=chunk)

    def _req_SaveFilePartRequest(self, phone, request):
        self.accounts[phone].uploads.setdefault(request.file_id, {})[request.file_part] = request.bytes
        return True

    def _req_SaveBigFilePartRequest(self, phone, request):
        return self._req_SaveFilePartRequest(phone, request)

    def _uploaded(self, phone, input_file) -> bytes:
        parts = self.accounts[phone].uploads.pop(input_file.id, None)
        if parts is None or len(parts) != input_file.parts:
            raise RpcFailure(400, "FILE_PARTS_INVALID")
        return b"".join(parts[i] for i in range(input_file.parts))

    def _input_media(self, phone, chat_from: Any, media) -> tuple[str, str]:
        """(media key, how) for the media of a send request."""
        if isinstance(media, types.InputMediaUploadedPhoto):
            data = self._uploaded(phone, media.file)
            from PIL import Image
            try:
                with Image.open(io.BytesIO(data)) as image:
                    w, h = image.size
            except Exception:
                raise RpcFailure(400, "IMAGE_PROCESS_FAILED") from None
            return self._media("photo", data, w=w, h=h), "upload"
        if isinstance(media, types.InputMediaUploadedDocument):
            return self._media("document", self._uploaded(phone, media.file), mime=media.mime_type,
                               attributes=list(media.attributes)), "upload"
        if isinstance(media, (types.InputMediaPhoto, types.InputMediaDocument)):
            kind = "photo" if isinstance(media, types.InputMediaPhoto) else "document"
            ref = media.id
            key = f"{kind}:{ref.id}"
            stored = self.media.get(key)
            if stored is None or ref.access_hash != self.access_hash(phone, kind, ref.id):
                raise RpcFailure(400, "MEDIA_EMPTY")
            if ref.file_reference != self.file_reference(phone, stored):
                raise RpcFailure(400, "FILE_REFERENCE_EXPIRED")
            if self._protected(key, phone):
                raise RpcFailure(400, "CHAT_FORWARDS_RESTRICTED")
            return key, "reference"
        raise RpcFailure(400, "MEDIA_INVALID")

    def _protected(self, key: str, phone: str) -> bool:
        """Whether the only chats where `phone` saw media `key` are protected."""
        seen = [c for c in self._dialog_chats(phone) if any(m.media == key for m in self._messages(c, phone).values())]
        return bool(seen) and all(c.noforwards for c in seen)

    # writes ------------------------------------------------------------------------------------

    def _writable(self, phone, peer) -> Chat:
        chat = self._resolve(phone, peer)
        if phone not in chat.members:
            raise RpcFailure(403, "CHAT_WRITE_FORBIDDEN")
        return chat

    def _topic_of(self, chat: Chat, reply_to) -> int | None:
        if reply_to is None:
            return None
        target = getattr(reply_to, "top_msg_id", None) or getattr(reply_to, "reply_to_msg_id", None)
        if not chat.forum or target is None:
            return None
        topic = chat.topics.get(target)
        if topic is None:
            message = chat.messages.get(target)
            if message is None or message.deleted:
                raise RpcFailure(400, "REPLY_MESSAGE_ID_INVALID")
            return message.topic
        if topic["deleted"]:
            raise RpcFailure(400, "TOPIC_DELETED")
        return target

    def _use_random_id(self, chat: Chat, random_id: int) -> None:
        if random_id in chat.random_ids:
            raise RpcFailure(500, "RANDOM_ID_DUPLICATE")
        chat.random_ids.add(random_id)

    def _send(self, phone, chat: Chat, random_id: int, fields: dict, via: str | None = None):
        if chat.per_account:
            raise NotImplementedError("the fake answers sends into channels and supergroups only")
        self._use_random_id(chat, random_id)
        message = Msg(chat.next_id, date=_now(), posted_by=phone, via=via, **fields)
        chat.next_id += 1
        chat.messages[message.id] = message
        chat.pts += 1
        chat.pts_log.append((chat.pts, message.id))
        for member in chat.members - {phone}:
            self._push(member, self._channel_update(member, chat, message))
        return self._channel_update(phone, chat, message, random_id=random_id)

    def _req_SendMediaRequest(self, phone, request):
        chat = self._writable(phone, request.peer)
        topic = self._topic_of(chat, request.reply_to)
        if request.random_id in chat.random_ids:   # checked before the media is taken
            raise RpcFailure(500, "RANDOM_ID_DUPLICATE")
        key, via = self._input_media(phone, chat, request.media)
        return self._send(phone, chat, request.random_id, {"text": request.message, "media": key, "topic": topic},
                          via)

    def _req_SendMessageRequest(self, phone, request):
        chat = self._writable(phone, request.peer)
        topic = self._topic_of(chat, request.reply_to)
        return self._send(phone, chat, request.random_id, {"text": request.message, "topic": topic})

    def _req_CreateForumTopicRequest(self, phone, request):
        chat = self._writable(phone, request.peer)
        if not chat.forum:
            raise RpcFailure(400, "CHANNEL_FORUM_MISSING")
        if phone not in chat.admins:
            raise RpcFailure(403, "CHAT_ADMIN_REQUIRED")
        if len(request.title.encode()) > 128:
            raise RpcFailure(400, "TOPIC_TITLE_EMPTY")
        action = types.MessageActionTopicCreate(title=request.title, icon_color=request.icon_color or ICON_COLOR)
        result = self._send(phone, chat, request.random_id, {"text": "", "action": action})
        topic_id = chat.next_id - 1
        chat.messages[topic_id].topic = None
        chat.topics[topic_id] = {"title": request.title, "closed": False, "deleted": False, "edits": 0}
        return result

    def _req_EditForumTopicRequest(self, phone, request):
        chat = self._writable(phone, request.peer)
        topic = chat.topics.get(request.topic_id)
        if topic is None:
            raise RpcFailure(400, "TOPIC_ID_INVALID")
        if topic["deleted"]:
            raise RpcFailure(400, "TOPIC_DELETED")
        changed = False
        if request.title is not None and request.title != topic["title"]:
            topic["title"], changed = request.title, True
        if request.closed is not None and request.closed != topic["closed"]:
            topic["closed"], changed = request.closed, True
        if not changed:
            raise RpcFailure(400, "TOPIC_NOT_MODIFIED")
        topic["edits"] += 1
        action = types.MessageActionTopicEdit(title=request.title, closed=request.closed)
        return self._send(phone, chat, _hash64("edit", request.topic_id, topic["edits"], next(self._seq)),
                          {"text": "", "action": action, "topic": request.topic_id})

    def _req_GetForumTopicsRequest(self, phone, request):
        chat = self._resolve(phone, request.peer)
        if not chat.forum:
            raise RpcFailure(400, "CHANNEL_FORUM_MISSING")
        found = [(tid, t) for tid, t in sorted(chat.topics.items(), reverse=True)
                 if not t["deleted"] and (not request.q or request.q.lower() in t["title"].lower())]
        topics = [types.ForumTopic(
            id=tid, date=chat.messages[tid].date, peer=chat.peer, title=t["title"], icon_color=ICON_COLOR,
            top_message=tid, read_inbox_max_id=0, read_outbox_max_id=0, unread_count=0, unread_mentions_count=0,
            unread_reactions_count=0, unread_poll_votes_count=0,
            from_id=types.PeerUser(self.accounts[phone].user_id),
            notify_settings=types.PeerNotifySettings(), closed=t["closed"] or None)
            for tid, t in found[:request.limit]]
        return tl_messages.ForumTopics(count=len(found), topics=topics, messages=[], chats=self._chats(phone, chat),
                                       users=self._users(phone), pts=chat.pts)

    def _req_EditMessageRequest(self, phone, request):
        chat = self._writable(phone, request.peer)
        message = chat.messages.get(request.id)
        if message is None or message.deleted:
            raise RpcFailure(400, "MESSAGE_ID_INVALID")
        if request.media is not None:
            message.media, message.via = self._input_media(phone, chat, request.media)
        if request.message is not None:
            message.text = request.message
        message.edit_date = _now()
        chat.pts += 1
        return types.Updates(updates=[types.UpdateEditChannelMessage(self._message(phone, chat, message), chat.pts, 1)],
                             users=self._users(phone), chats=self._chats(phone, chat), date=_now(), seq=0)

    def _req_DeleteMessagesRequest(self, phone, request):
        if not isinstance(request, functions.channels.DeleteMessagesRequest):
            raise NotImplementedError("messages.deleteMessages")
        chat = self._writable(phone, request.channel)
        if len(request.id) > DELETE_MAX:
            raise RpcFailure(400, "MESSAGE_IDS_TOO_MUCH")   # Telegram's limit: 100 ids per call
        gone = 0
        for mid in request.id:
            message = chat.messages.get(mid)
            if message is not None and not message.deleted:
                message.deleted = True
                gone += 1
        chat.pts += gone
        return tl_messages.AffectedMessages(pts=chat.pts, pts_count=gone)


