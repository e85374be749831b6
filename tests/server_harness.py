"""The daemon's Telegram side on the fake Telegram server (tests/telegram_server.py).

`ServerHarness` is a `TelegramServer` with a hub, settings pointing at it, and accounts recorded
in the database, each logged into its own SQLite session file in SESSIONS_DIR. The clients the
daemon builds are real `TelegramClient`s with the production options (`accounts.client_options`)
except `request_retries=2`: Telethon repeats a server error (RANDOM_ID_DUPLICATE included) that
many times with 2 s between tries; the path is the same as with production's 5, only shorter.

    h = ServerHarness(tmp_path, pool)
    a = await h.add_account("+15550001")                 # also the hub account (the first one)
    chat = h.server.add_chat("News", kind="channel", members=["+15550001"])
    await h.watch(a, chat)
    service = await h.service()                           # a started TelegramService
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

from telethon.sessions import SQLiteSession
from telethon.tl.types import messages as tl_messages

from telegram_server import TelegramServer


class ServerHarness:
    def __init__(self, base: Path, pool: Any, *, clock: Any = None, **settings: Any):
        import config

        self.base = Path(base)
        self.pool = pool
        self.server = TelegramServer(**({"clock": clock} if clock else {}))
        self.hub = self.server.add_hub("Faces hub")
        self.accounts: dict[str, int] = {}
        values = dict(tg_api_id=12345, tg_api_hash="0123456789abcdef0123456789abcdef", hub_group_id=self.hub,
                      data_dir=self.base / "data", flood_sleep_threshold=0, hub_posts_per_minute=60)
        self.settings = config.load_settings(None, **(values | settings))
        self.factory = self.server.factory(request_retries=2)
        self.services: list[Any] = []

    def with_settings(self, **changes: Any) -> Any:
        self.settings = self.settings.model_copy(update=changes)
        return self.settings

    def session_path(self, phone: str) -> Path:
        return self.settings.sessions_path / f"{phone.lstrip('+')}.session"

    async def add_account(self, phone: str, *, hub_member: bool = True, knows_hub: bool = True) -> int:
        """A Telegram account logged into its session file and recorded in telegram_accounts.
        `knows_hub`: its session has the hub in its entity cache (as a session that has seen
        the hub has); False is a session that never did."""
        self.server.add_account(phone)
        if hub_member:
            self.server.join(self.hub, phone, admin=True)
        path = self.session_path(phone)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.server.login(phone, path)
        if hub_member and knows_hub:
            self.remember(phone, self.hub)
        async with self.pool.connection() as conn:
            row = await (await conn.execute(
                "INSERT INTO telegram_accounts (phone_number, session_file_path) VALUES (%s, %s) RETURNING id",
                (phone, path.name))).fetchone()
        self.accounts[phone] = row[0]
        return row[0]

    def remember(self, phone: str, chat_id: int) -> None:
        """Put a chat into the account's session entity cache (what seeing it once does)."""
        chat = self.server.chats[chat_id]
        session = SQLiteSession(str(self.session_path(phone)))
        session.process_entities(tl_messages.Chats(chats=[self.server._chat_object(phone, chat)]))
        session.save()
        session.close()

    async def watch(self, account_id: int, chat_id: int, *, phone: str | None = None) -> int:
        """Record that `account_id` watches `chat_id` (what applying add_chat stores)."""
        phone = phone or next(p for p, a in self.accounts.items() if a == account_id)
        chat = self.server._chat_for(phone, chat_id)
        kind = chat.kind
        async with self.pool.connection() as conn:
            row = await (await conn.execute(
                """INSERT INTO scan_checkpoints (account_id, chat_id, chat_title, chat_username, chat_type, noforwards)
                   VALUES (%s, %s, %s, %s, %s, %s) RETURNING id""",
                (account_id, chat_id, chat.title, chat.username, kind, chat.noforwards))).fetchone()
        return row[0]

    async def service(self, role: str = "all", **tuning: Any) -> Any:
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
