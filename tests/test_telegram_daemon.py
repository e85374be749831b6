"""The whole daemon in a subprocess (tests/daemon_launcher.py, FA_TELEGRAM_SERVER) with real
Telethon clients against the fake Telegram server (tests/telegram_server.py) served from this
process (tests/telegram_wire.py), real PostgreSQL and the real dlib engine: lost answers to
topic creations and posts, and kill -9 at random moments; nothing lost, nothing posted twice."""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from telegram_server import TelegramServer
from telegram_wire import serve
from test_daemon import BIDEN, BOTH, NOBODY, OBAMA, PHOTOS_ENV, db, daemons  # noqa: F401  (fixtures)
from test_daemon_workers import Daemon, process_gone, wait_until

PHONE = "+15550001"


class ServedWorld:
    """A TelegramServer with one account, a hub and a family chat, served on a Unix socket by
    an event loop in a thread of this process (its state is only touched in that loop)."""

    def __init__(self, base: Path, faces_dir: Path, conninfo: str, photos: list[str]):
        self.server = TelegramServer()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.socket = base / "telegram.sock"
        self.listener = self.call(serve, self.server, self.socket)
        self.faces_dir = faces_dir
        self.conninfo = conninfo
        self.files: dict[tuple[int, int], str] = {}
        self.server.add_account(PHONE)
        self.hub = self.server.add_hub("Faces hub", members=[PHONE])
        self.chat = self.server.add_chat("Family", kind="supergroup", members=[PHONE])
        for name in photos:
            self.post(name, deliver=False)
        sessions = base / "data" / "sessions"
        sessions.mkdir(parents=True, exist_ok=True)
        self.server.login(PHONE, sessions / "15550001.session")
        with psycopg.connect(conninfo) as conn:
            account = conn.execute("INSERT INTO telegram_accounts (phone_number, session_file_path) "
                                   "VALUES (%s, %s) RETURNING id", (PHONE, "15550001.session")).fetchone()[0]
            conn.execute("INSERT INTO scan_checkpoints (account_id, chat_id, chat_title, chat_type) "
                         "VALUES (%s, %s, 'Family', 'supergroup')", (account, self.chat))
        self.env = {"TG_API_ID": "12345", "TG_API_HASH": "0123456789abcdef0123456789abcdef",
                    "HUB_GROUP_ID": str(self.hub), "FLOOD_SLEEP_THRESHOLD": "0", "HUB_POSTS_PER_MINUTE": "60",
                    "FA_TELEGRAM_SERVER": str(self.socket)} | PHOTOS_ENV

    def call(self, fn, *args, **kwargs):
        """Run `fn` (a function or a coroutine function) in the server's loop; its result."""
        async def run():
            result = fn(*args, **kwargs)
            return await result if asyncio.iscoroutine(result) else result
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def post(self, name: str, *, deliver: bool = True) -> int:
        media = self.call(self.server.photo, self.faces_dir / name)
        message_id = self.call(self.server.post, self.chat, media, text=name, deliver=deliver)
        self.files[(self.chat, message_id)] = name
        return message_id

    def close(self) -> None:
        self.call(self.listener.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def hub_content(self) -> dict[int, list[str]]:
        """{topic id: [file name of each post's source message]} ('cover' for the face crop)."""
        raw = self.server.chats[self.chat].raw_id
        content: dict[int, list[str]] = {}
        for post in self.call(self.server.posts, self.hub):
            link = re.search(r"t\.me/c/(\d+)/(\d+)", post.text or "")
            assert link is None or int(link.group(1)) == raw
            name = self.files[(self.chat, int(link.group(2)))] if link else "cover"
            content.setdefault(post.topic, []).append(name)
        return content

    def settled(self) -> bool:
        """Every job finished and every due post sent (read in one statement: one snapshot, so
        jobs inserted between two reads cannot look finished)."""
        with psycopg.connect(self.conninfo) as conn:
            jobs, open_jobs, unsent, topics = conn.execute(
                """SELECT (SELECT count(*) FROM media_jobs),
                          (SELECT count(*) FROM media_jobs WHERE status IN ('queued', 'staged')),
                          (SELECT count(*) FROM uploaded_media WHERE status <> 'posted'),
                          (SELECT count(*) FROM telegram_topics WHERE topic_id IS NULL
                                  AND merged_into IS NULL AND NOT hidden)""").fetchone()
        return jobs == len(self.files) and open_jobs == 0 and unsent == 0 and topics == 0


@pytest.fixture
def world(tmp_path, db, faces_dir):  # noqa: F811
    w = ServedWorld(tmp_path, faces_dir, db, OBAMA + BIDEN + [BOTH] + NOBODY)
    yield w
    w.close()


def assert_posted_exactly_once(w: ServedWorld) -> None:
    content = w.hub_content()
    with psycopg.connect(w.conninfo) as conn:
        posted = conn.execute("SELECT count(*) FROM uploaded_media WHERE status = 'posted'").fetchone()[0]
        failed = conn.execute("SELECT count(*) FROM uploaded_media WHERE status = 'failed'").fetchone()[0]
        jobs = Counter(s for (s,) in conn.execute("SELECT status FROM media_jobs"))
    assert jobs == Counter({"done": len(w.files)}), jobs
    assert failed == 0
    assert len(content) == 2, f"two persons, two topics: {content}"
    topic_of: dict[str, set[int]] = {}
    for topic, names in content.items():
        assert names[0] == "cover" and names.count("cover") == 1, names
        doubles = [n for n, k in Counter(names).items() if k > 1 and n != "cover"]
        assert not doubles, f"posted twice into topic {topic}: {doubles}"
        for name in names[1:]:
            topic_of.setdefault(name, set()).add(topic)
    assert sum(len(n) - 1 for n in content.values()) == posted
    obama, biden = topic_of[OBAMA[0]], topic_of[BIDEN[0]]
    assert len(obama) == len(biden) == 1 and obama != biden
    for name in w.files.values():
        expected = obama if name in OBAMA else biden if name in BIDEN else obama | biden if name == BOTH else set()
        assert topic_of.get(name, set()) == expected, f"{name} is in {topic_of.get(name)}, not {expected}"


def test_lost_answers_and_kill_9_post_everything_exactly_once(world, tmp_path, db, daemons):  # noqa: F811
    w = world
    # Telegram creates the first topic and accepts two posts, but the answers never arrive.
    w.call(w.server.fail, "CreateForumTopicRequest", "ConnectionError", accept=True)
    w.call(w.server.fail, "SendMediaRequest", "ConnectionError", accept=True, times=2)
    d = Daemon(tmp_path, db, "run", env=w.env | {"NUM_WORKERS": "1"})
    rng = random.Random(15)
    for _ in range(6):
        daemons.append(d.start())
        time.sleep(rng.uniform(3.0, 10.0))             # start-up takes ~5 s here: kills land everywhere
        d.kill()
    pids = d.analysis_pids()
    wait_until(lambda: all(process_gone(pid) for pid in pids), timeout=5)
    daemons.append(d.start())
    wait_until(w.settled, daemons=[d], timeout=180)
    time.sleep(1.0)
    assert d.stop()[0] == 0, d.text()[-3000:]
    assert_posted_exactly_once(w)
    assert w.server.faults == []                      # every lost answer happened
