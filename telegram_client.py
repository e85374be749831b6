"""The Telegram side of the daemon: accounts, chats, history sweeps, live updates, downloads,
topics and posting. This module composes the parts; each lives in its own module:

- `accounts.AccountRegistry`: one client per active account (reconnects, account states), on
  `sessions` (session files 0600, one process per session, the client factory), with
  `flood_waits` (flood-wait bookkeeping);
- `history_scanner.MessageScanner` (history sweeps, the source of truth) and
  `realtime_scanner.RealtimeScanner` (live updates, the fast path), both inserting idempotent
  jobs for the media that `media_kinds` recognises;
- `downloads.MediaDownloadManager`: a claimed job's media into the staging area;
- `topics.TopicManager`: persons' forum topics in the hub;
- `media_uploader.MediaUploader`: the outbox into the topics, paced; `post_sender` makes each post;
- `chats.ChatManager` and `telegram_actions.ActionApplier`: the requests that the dashboard and
  `add_chat.py` record for the daemon's clients.

`TelegramService` builds the parts a process role needs and hands them to the daemon as
long-running components (name, run, stop); `run()` returns when `stop()` is called.

    service = TelegramService(settings, pool, role="all", client_factory=None)
    await service.start()
    for name, run, stop in service.components(): ...   # supervised tasks
    WorkerPool(..., downloader=service.downloader, account_ids=service.account_ids)
    await service.close()
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from accounts import AccountRegistry
from chats import ChatManager, parse_chat_identifier
from downloads import MediaDownloadManager
from flood_waits import record_flood_wait
from history_scanner import MessageScanner
from media_kinds import MediaInfo, classify
from media_uploader import MediaUploader, Pacer
from post_sender import caption_for, message_link
from realtime_scanner import RealtimeScanner
from sessions import Account, AccountError, ClientFactory, SessionBusy, SessionLock, mask_phone, telethon_client
from telegram_actions import CHAT_ACTIONS, TOPIC_ACTIONS, ActionApplier
from topics import TopicManager, topic_title

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from config import Settings

__all__ = [
    "Account", "AccountError", "AccountRegistry", "ActionApplier", "CHAT_ACTIONS", "ChatManager",
    "ClientFactory", "MediaDownloadManager", "MediaInfo", "MediaUploader", "MessageScanner", "Pacer",
    "RealtimeScanner", "SessionBusy", "SessionLock", "TOPIC_ACTIONS", "TelegramService", "TelegramTuning",
    "TopicManager", "caption_for", "classify", "mask_phone", "message_link", "parse_chat_identifier",
    "record_flood_wait", "telethon_client", "topic_title",
]

logger = logging.getLogger(__name__)

Component = tuple[str, Callable[[], Awaitable[None]], Callable[[], None]]


@dataclass
class TelegramTuning:
    """Timings; production defaults. Tests shorten them."""

    sweep_interval: float | None = None     # None: SWEEP_INTERVAL_SECONDS
    sweep_poll: float = 2.0                 # how often idle accounts look for due chats
    watched_refresh: float = 5.0            # how often the live handler reloads the watched chats
    account_check: float = 5.0              # how often lost connections are retried
    connect_timeout: float = 60.0           # a connect (with its get_me and updates.GetState) longer is retried
    actions_poll: float = 2.0
    uploads_poll: float = 2.0
    offline_retry: float = 30.0             # a post cut off by a broken connection is tried again after
    page_wait: float = 1.0                  # pause between pages of history (Telethon's own default
                                            # for long reads: it keeps a backfill off flood limits)
    hub_posts_per_minute: float | None = None   # None: HUB_POSTS_PER_MINUTE (tests go past its cap
                                                # of 60: the fake Telegram has no such limit)


class TelegramService:
    """The Telegram parts of the daemon: every active account's client, and everything done with
    them (sweeps, live updates, downloads, chat requests, topics, posts, topic requests).

    One process only (the `all` role): a session file can be open in one process, and a post
    re-sends the media by reference with the account that saw it, so the Telegram side cannot be
    split between processes. `role` is kept for the callers; it must be "all".
    """

    def __init__(self, settings: Settings, pool: AsyncConnectionPool, *, role: str = "all",
                 client_factory: ClientFactory | None = None, tuning: TelegramTuning | None = None,
                 pacer: Pacer | None = None):
        if role != "all":
            raise ValueError(f"no Telegram parts for role {role!r}: the Telegram side runs in the 'all' role")
        self.settings = settings
        self.pool = pool
        self.role = role
        self.tuning = tuning or TelegramTuning()
        self.registry = AccountRegistry(settings, pool, client_factory, check_interval=self.tuning.account_check,
                                       connect_timeout=self.tuning.connect_timeout)
        self.pacer = pacer or Pacer(self.tuning.hub_posts_per_minute or settings.hub_posts_per_minute)
        self.scanner: MessageScanner | None = None
        self.realtime: RealtimeScanner | None = None
        self.downloader: MediaDownloadManager | None = None
        self.chats: ChatManager | None = None
        self.topics: TopicManager | None = None
        self.uploader: MediaUploader | None = None
        self.actions: ActionApplier | None = None

    async def start(self) -> None:
        """Connect the accounts and build the parts."""
        await self.registry.start()
        settings, pool, tuning = self.settings, self.pool, self.tuning
        self.scanner = MessageScanner(self.registry, pool, settings, interval=tuning.sweep_interval,
                                      poll_interval=tuning.sweep_poll, page_wait=tuning.page_wait)
        self.realtime = RealtimeScanner(self.registry, pool, settings, refresh_interval=tuning.watched_refresh)
        self.realtime.attach()
        self.realtime.on_migration = self.scanner.request_sweep
        self.scanner.on_migration = self.realtime.request_refresh
        self.downloader = MediaDownloadManager(self.registry, pool, settings)
        self.chats = ChatManager(self.registry, pool, settings, on_change=self._chat_changed)
        self.topics = TopicManager(self.registry, pool, settings, pacer=self.pacer)
        self.uploader = MediaUploader(self.registry, pool, settings, self.topics, poll_interval=tuning.uploads_poll,
                                      offline_retry=tuning.offline_retry)
        self.actions = ActionApplier(pool, [self.chats, self.topics], poll_interval=tuning.actions_poll)
        if settings.hub_group_id is None:
            logger.warning("HUB_GROUP_ID is not set: persons are found, but nothing is posted until it is")

    def _chat_changed(self, account_id: int, chat_id: int) -> None:
        if self.scanner is not None:
            self.scanner.request_sweep(account_id, chat_id)
        if self.realtime is not None:
            self.realtime.request_refresh()

    def account_ids(self) -> list[int]:
        """The accounts whose jobs this process can download (it holds their clients)."""
        return self.registry.account_ids()

    def components(self) -> list[Component]:
        """(name, run, stop) of every long-running part, for the daemon to supervise."""
        parts: list[Component] = [("telegram-connections", self.registry.run, self.registry.stop)]
        if self.scanner is not None:
            parts.append(("history-sweeps", self.scanner.run, self.scanner.stop))
        if self.realtime is not None:
            parts.append(("live-updates", self.realtime.run, self.realtime.stop))
        if self.actions is not None:
            parts.append(("telegram-requests", self.actions.run, self.actions.stop))
        if self.uploader is not None:
            parts.append(("hub-uploads", self.uploader.run, self.uploader.stop))
        return parts

    def stop(self) -> None:
        for _, _, stop in self.components():
            stop()

    async def close(self) -> None:
        """Disconnect the clients (after the components stopped)."""
        await self.registry.close()
