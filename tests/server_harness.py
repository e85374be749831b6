"""The daemon's Telegram side on the fake Telegram server (tests/telegram_server.py).

`ServerHarness` is a `TelegramServer` with a hub, settings pointing at it, and accounts recorded
in the database, each logged into its own SQLite session file in SESSIONS_DIR. The clients the
daemon builds are real `TelegramClient`s with the production options (`sessions.client_options`)
except `request_retries=2`: Telethon repeats a server error (RANDOM_ID_DUPLICATE included) that
many times with 2 s between tries; the path is the same as with production's 5, only shorter.

    h = ServerHarness(tmp_path, pool)
    a = await h.add_account("+15550001")                 # also the hub account (the first one)
    chat = h.server.add_chat("News", kind="channel", members=["+15550001"])
    await h.watch(a, chat)
    service = await h.service()                           # a started TelegramService

`Network(server)` adds what happens between the client and Telegram rather than in Telegram:
an account's connection going away and coming back (`set_online`), answers that are slow
(`delay`), and a fault that strikes only after some requests went through (`fail_after`: "the
connection breaks on the second page of history"). It wraps the server's `handle`, so it works
for the clients in this process (`FakeSender`) and for a daemon in a subprocess
(tests/telegram_wire.py) alike. `ServerHarness` has one (`h.network`).
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

from telethon import utils
from telethon.sessions import SQLiteSession
from telethon.tl import functions
from telethon.tl.types import messages as tl_messages

from telegram_joins import JoinRequests
from telegram_logins import LoginRequests
from telegram_server import FakeSender, TelegramServer
from telegram_world import fault_error


class HarnessServer(LoginRequests, JoinRequests, TelegramServer):
    """The fake Telegram server, also answering the requests that log in (tests/telegram_logins.py)
    and that find and join chats (tests/telegram_joins.py)."""


class ServerHarness:
    def __init__(self, base: Path, pool: Any, *, clock: Any = None, **settings: Any):
        import config

        self.base = Path(base)
        self.pool = pool
        self.server = HarnessServer(**({"clock": clock} if clock else {}))
        self.network = Network(self.server)
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

        values = dict(sweep_poll=0.1, watched_refresh=0.1, account_check=0.2, actions_poll=0.1, uploads_poll=0.1,
                      page_wait=0.0)
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


class Network:
    """The network between the clients and `server` (see the module doc). Install one per server."""

    def __init__(self, server: TelegramServer):
        self.server = server
        self.offline: set[str] = set()
        self.seen: list[tuple[str | None, Any]] = []     # (phone, request), every request in order
        self._delays: list[dict] = []
        self._later: list[dict] = []
        self._handle = server.handle
        server.handle = self.handle      # the senders (in-process and on the wire) call this

    def set_online(self, phone: str, online: bool) -> None:
        """Take `phone`'s connection away (its open connections drop, requests in flight and
        every reconnection attempt fail with ConnectionError, updates meanwhile are lost) or
        give it back (the client's owner has to connect again, as the daemon's registry does)."""
        if online:
            self.offline.discard(phone)
        else:
            self.offline.add(phone)
            self._drop(phone)

    def delay(self, request: str, seconds: float, *, phone: str | None = None, times: int | None = 1) -> None:
        """The next `times` (None: all) `request`s of `phone` (None: any) are answered `seconds` late."""
        self._delays.append(dict(request=request, seconds=seconds, phone=phone, times=times))

    def fail_after(self, request: str, error: str, *, after: int, phone: str | None = None,
                   chat: int | None = None, times: int | None = 1) -> None:
        """Let `after` `request`s (of `phone`, about `chat`: a marked id) through, then the next
        `times` (None: all) fail with `error`: as `TelegramServer.fail` (but never applied), or
        "TypeError"/"TimeoutError" raised beneath Telethon. `request` may also be one the server
        answers on its own, such as the "GetConfigRequest" of every (re)connection."""
        self._later.append(dict(request=request, error=error, after=after, phone=phone, chat=chat, times=times))

    def requests(self, name: str, phone: str | None = None) -> list[Any]:
        """The requests called `name` that reached the server (unwrapped), in order."""
        return [r for p, r in self.seen if type(r).__name__ == name and phone in (None, p)]

    async def handle(self, phone: str | None, request: Any) -> Any:
        inner = request
        while isinstance(inner, (functions.InvokeWithLayerRequest, functions.InitConnectionRequest,
                                 functions.InvokeWithoutUpdatesRequest)):
            inner = inner.query
        name = type(inner).__name__
        if phone in self.offline:
            self._drop(phone)            # a reconnection attempt: refused
            raise ConnectionError("fake Telegram: the network is down")
        self.seen.append((phone, inner))
        for delay in list(self._delays):
            if delay["request"] == name and delay["phone"] in (None, phone):
                self._count_down(self._delays, delay)
                await asyncio.sleep(delay["seconds"])
                break
        for later in list(self._later):
            if later["request"] == name and later["phone"] in (None, phone) and later["chat"] in (None, _chat_of(inner)):
                if later["after"] > 0:
                    later["after"] -= 1
                    continue
                self._count_down(self._later, later)
                if later["error"] in ("TypeError", "TimeoutError"):   # Telethon or asyncio failing beneath
                    raise {"TypeError": TypeError, "TimeoutError": TimeoutError}[later["error"]]("fake failure")
                raise fault_error(later["error"])
        result = await self._handle(phone, request)
        if phone in self.offline:        # the network went down while this was on its way back
            raise ConnectionError("fake Telegram: the network is down")
        return result

    @staticmethod
    def _count_down(items: list[dict], item: dict) -> None:
        if item["times"] is not None:
            item["times"] -= 1
            if item["times"] <= 0:
                items.remove(item)

    def _drop(self, phone: str) -> None:
        """Break `phone`'s open connections, as a network outage does."""
        for connection in list(self.server.senders.get(phone, ())):
            if isinstance(connection, FakeSender):
                connection._user_connected = False
                for senders in self.server.senders.values():
                    senders.discard(connection)
                if connection._done is not None and not connection._done.done():
                    connection._done.set_result(None)
            else:                        # telegram_wire's connection of a daemon subprocess
                connection.writer.close()


def _chat_of(request: Any) -> int | None:
    peer = getattr(request, "peer", None) or getattr(request, "channel", None)
    try:
        return utils.get_peer_id(peer) if peer is not None else None
    except (TypeError, ValueError):
        return None


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
