"""A fake Telegram world served to daemons in subprocesses, for scenario tests.

`ServedWorld` holds a `TelegramServer` (tests/telegram_server.py) in an event loop on a thread
of the test process and serves it on a Unix socket (tests/telegram_wire.py); daemons started
with `world.env` (tests/daemon_launcher.py, FA_TELEGRAM_SERVER) talk to it with real Telethon
clients. Accounts are logged into session files under DATA_DIR/sessions and recorded in the
database; chats are watched as applying add_chat records them. The world outlives the daemons,
so they can be killed with -9 at any moment and started again against the same Telegram.

    w = ServedWorld(tmp_path, faces_dir, conninfo)
    a = w.add_account("+15550001")               # the first account posts to the hub
    chat = w.add_chat("Family", members=["+15550001"])
    w.watch("+15550001", chat)
    w.post(chat, "barack_obama_01.jpg")
    Daemon(tmp_path, conninfo, "run", env=w.env).start()
    ... w.hub_content()                          # {topic id: [file name of each post]}

Every photo is known by its bytes, so a post made by reference or by upload, from any kind of
chat, maps back to the file it shows ("cover" for a person's face crop).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path
from typing import Any

import psycopg

from telegram_server import TelegramServer
from telegram_wire import serve


class ServedWorld:
    def __init__(self, base: Path, faces_dir: Path, conninfo: str, *, env: dict[str, str] | None = None,
                 server: TelegramServer | None = None):
        self.server = server if server is not None else TelegramServer()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.socket = base / "telegram.sock"
        self.listener = self.call(serve, self.server, self.socket)
        self.faces_dir = faces_dir
        self.conninfo = conninfo
        self.sessions = base / "data" / "sessions"
        self.sessions.mkdir(parents=True, exist_ok=True)
        self.names: dict[str, str] = {}          # sha256 of a file's bytes -> its name
        self.account_ids: dict[str, int] = {}
        self.hub = self.call(self.server.add_hub, "Faces hub")
        self.env = {"TG_API_ID": "12345", "TG_API_HASH": "0123456789abcdef0123456789abcdef",
                    "HUB_GROUP_ID": str(self.hub), "FLOOD_SLEEP_THRESHOLD": "0", "HUB_POSTS_PER_MINUTE": "60",
                    "FA_TELEGRAM_SERVER": str(self.socket)} | (env or {})

    def call(self, fn, *args, **kwargs):
        """Run `fn` (a function or a coroutine function) in the server's loop; its result."""
        async def run():
            result = fn(*args, **kwargs)
            return await result if asyncio.iscoroutine(result) else result
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def close(self) -> None:
        if self.listener is not None:
            self.call(self.listener.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        assert not self.server.bugs, f"the fake Telegram failed on requests: {self.server.bugs}"

    # --- building ---------------------------------------------------------------------------------

    def add_account(self, phone: str, *, hub_member: bool = True) -> int:
        """An account logged into its session file and recorded in telegram_accounts."""
        self.call(self.server.add_account, phone)
        if hub_member:
            self.call(self.server.join, self.hub, phone, admin=True)
        name = f"{phone.lstrip('+')}.session"
        self.call(self.server.login, phone, self.sessions / name)
        account = self.sql("INSERT INTO telegram_accounts (phone_number, session_file_path) VALUES (%s, %s) "
                           "RETURNING id", phone, name)[0][0]
        self.account_ids[phone] = account
        return account

    def add_chat(self, title: str, *, kind: str = "supergroup", members: list[str] = (), **options: Any) -> int:
        return self.call(self.server.add_chat, title, kind=kind, members=list(members), **options)

    def watch(self, phone: str, chat_id: int) -> None:
        chat = self.call(self.server._chat_for, phone, chat_id)
        self.sql("INSERT INTO scan_checkpoints (account_id, chat_id, chat_title, chat_type, noforwards) "
                 "VALUES (%s, %s, %s, %s, %s)", self.account_ids[phone], chat_id, chat.title, chat.kind,
                 chat.noforwards)

    def photo(self, name: str) -> str:
        """A photo of tests/faces as Telegram media (a new media each time); its media key."""
        path = self.faces_dir / name
        self.names[hashlib.sha256(path.read_bytes()).hexdigest()] = name
        return self.call(self.server.photo, path)

    def post(self, chat_id: int, name: str | None = None, *, text: str | None = None, **options: Any) -> Any:
        """A message with the photo `name` (or text only); see TelegramServer.post."""
        media = self.photo(name) if name else None
        return self.call(self.server.post, chat_id, media, text if text is not None else (name or ""), **options)

    # --- reading ----------------------------------------------------------------------------------

    def sql(self, query: str, *params: Any) -> list[tuple]:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def name_of(self, media_key: str | None) -> str:
        if media_key is None:
            return "text"
        media = self.server.media[media_key]
        return self.names.get(media.sha256, "cover")

    def hub_content(self) -> dict[int, list[str]]:
        """{topic id: [file name shown by each post, oldest first]} of the hub's live topics."""
        def read():
            live = self.server.live_topics(self.hub)
            return [(p.topic, p.media) for p in self.server.posts(self.hub) if p.topic in live]
        content: dict[int, list[str]] = {}
        for topic, media in self.call(read):
            content.setdefault(topic, []).append(self.name_of(media))
        return content

    def statuses(self, table: str = "media_jobs") -> dict[str, int]:
        assert table in ("media_jobs", "uploaded_media")
        return dict(self.sql(f"SELECT status, count(*) FROM {table} GROUP BY status"))

    def settled(self, jobs: int) -> bool:
        """`jobs` jobs, every one finished, every due post sent, no topic waiting (one snapshot)."""
        total, open_jobs, unsent, topics = self.sql(
            """SELECT (SELECT count(*) FROM media_jobs),
                      (SELECT count(*) FROM media_jobs WHERE status IN ('queued', 'staged')),
                      (SELECT count(*) FROM uploaded_media WHERE status <> 'posted'),
                      (SELECT count(*) FROM telegram_topics WHERE topic_id IS NULL
                              AND merged_into IS NULL AND NOT hidden)""")[0]
        return total == jobs and open_jobs == 0 and unsent == 0 and topics == 0
