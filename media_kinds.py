"""What counts as media in a Telegram message, and the job a media message becomes.

Photos, documents whose mime type is an image, videos, round video notes and GIF animations
(Telegram's GIFs are silent mp4s). A job's media key is 'photo:<id>' / 'document:<id>': forwards
keep the id, so the same media in many chats is downloaded and analysed once. Media larger than
MAX_MEDIA_SIZE_MB become jobs with status 'skipped' (recorded, not failed). Used by the history
sweeps (history_scanner), the live handler (realtime_scanner), downloads and topics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from telethon import types, utils


@dataclass(frozen=True)
class MediaInfo:
    """The media of one message as the job queue stores it."""

    media_key: str           # 'photo:<id>' or 'document:<id>'
    media_type: str          # photo | image | video | round | gif
    mime_type: str | None
    file_size: int | None


def classify(message: Any) -> MediaInfo | None:
    """The analysable media of a message, or None (text, stickers, audio, files, self-destructing)."""
    media = getattr(message, "media", None)
    if isinstance(media, types.MessageMediaPhoto):
        photo = media.photo
        if not isinstance(photo, types.Photo) or media.ttl_seconds:
            return None
        return MediaInfo(f"photo:{photo.id}", "photo", "image/jpeg", photo_size(photo))
    if isinstance(media, types.MessageMediaDocument):
        doc = media.document
        if not isinstance(doc, types.Document) or media.ttl_seconds:
            return None
        kind = document_kind(doc)
        if kind is None:
            return None
        return MediaInfo(f"document:{doc.id}", kind, doc.mime_type, doc.size)
    return None


def document_kind(doc: types.Document) -> str | None:
    """image | video | round | gif for the documents worth analysing, else None."""
    mime = (doc.mime_type or "").lower()
    attributes = doc.attributes or []
    if any(isinstance(a, (types.DocumentAttributeSticker, types.DocumentAttributeAudio)) for a in attributes):
        return None
    video = next((a for a in attributes if isinstance(a, types.DocumentAttributeVideo)), None)
    animated = any(isinstance(a, types.DocumentAttributeAnimated) for a in attributes)
    if animated and (mime.startswith("video/") or video is not None):
        return "gif"      # Telegram's "GIFs" are silent mp4 animations
    if video is not None and video.round_message:
        return "round"
    if mime.startswith("video/"):
        return "video"
    if mime.startswith("image/"):
        return "image"
    return None


def photo_size(photo: types.Photo) -> int | None:
    """The size in bytes of the largest version of a photo (the one that is downloaded)."""
    best = None
    for size in photo.sizes or []:
        if isinstance(size, types.PhotoSize):
            value = size.size
        elif isinstance(size, types.PhotoSizeProgressive):
            value = max(size.sizes) if size.sizes else None
        elif isinstance(size, types.PhotoCachedSize):
            value = len(size.bytes)
        else:
            continue
        if value is not None and (best is None or value > best):
            best = value
    return best


def migration_target(message: Any) -> int | None:
    """The marked id of the supergroup a basic group became, if `message` says so (the old
    group's last message, `MessageActionChatMigrateTo`)."""
    action = getattr(message, "action", None)
    if isinstance(action, types.MessageActionChatMigrateTo):
        return utils.get_peer_id(types.PeerChannel(action.channel_id))
    return None


def chat_id_of(message: Any) -> int:
    """The marked id of the chat a message is in."""
    return utils.get_peer_id(message.peer_id)


def job_values(info: MediaInfo, max_bytes: int) -> tuple[str, str | None]:
    """(status, note) of a new job: queued, or skipped when the media is too large."""
    if info.file_size is not None and info.file_size > max_bytes:
        return "skipped", (f"{info.file_size / 2**20:.0f} MB is more than MAX_MEDIA_SIZE_MB "
                           f"({max_bytes / 2**20:.0f} MB): not downloaded")
    return "queued", None
