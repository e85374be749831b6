"""The daemon in a subprocess (tests/daemon_launcher.py) against the fake Telegram server
(tests/served_world.py), real PostgreSQL and the real dlib engine: live messages and restarts.

1. A live photo reaches the `events.NewMessage` handler and is posted within seconds, with the
   history sweep an hour away, even when the account's first connect broke off half-way (its
   `updates.GetState` never answered): the registry must connect it again from scratch, or
   Telethon, looking connected, never starts its update loop. (In-process too, for each request
   of Telethon's connect: fast, and with the error as well as the silence.)
2. `kill -9` during a backfill of several pages of history (while the first page's photos are
   being posted), and a restart: every photo posted exactly once into its person's topic, none
   lost, no job `failed`, the backfill finished from where it stood.
"""

from __future__ import annotations

import random
import time

import pytest

from media_fixtures import faces_dir
from served_world import ServedWorld
from server_harness import eventually, run_components
from test_daemon import BIDEN, OBAMA, db, daemons  # noqa: F401  (fixtures)
from test_daemon_workers import process_gone, wait_until
from test_telegram_scenarios import assert_posted_exactly_once, daemon, world  # noqa: F401  (world: a fixture)

A = "+15550001"
FACES = faces_dir()


def job_of(w: ServedWorld, chat: int, message: int) -> str | None:
    rows = w.sql("SELECT status FROM media_jobs WHERE source_chat_id = %s AND source_message_id = %s", chat, message)
    return rows[0][0] if rows else None


def posted(w: ServedWorld, name: str) -> bool:
    return any(name in names for names in w.hub_content().values())


def test_a_live_photo_is_posted_at_once_after_a_connect_that_broke_off(world, tmp_path, db, daemons):  # noqa: F811
    w = world
    w.add_account(A)
    chat = w.add_chat("Family", members=[A])
    w.watch(A, chat)
    for name in OBAMA[:2]:                              # history: Obama's person is made from it
        w.post(chat, name, deliver=False)
    # The first connect's updates.GetState is never answered: connect() times out half-way
    # (after the launcher's 3 s), with the connection up.
    w.call(w.server.fail, "GetStateRequest", "hang")
    d = daemon(w, tmp_path, db, SWEEP_INTERVAL_SECONDS="3600")
    daemons.append(d.start())
    wait_until(lambda: w.settled(2), daemons=[d], timeout=60)
    assert "GetStateRequest" in w.call(w.server.requests)

    live = w.post(chat, OBAMA[2])                       # the sweep is an hour away: only the handler
    started = time.monotonic()
    wait_until(lambda: job_of(w, chat, live) is not None, daemons=[d], timeout=10)
    wait_until(lambda: w.settled(3) and posted(w, OBAMA[2]), daemons=[d], timeout=30)
    took = time.monotonic() - started
    assert "new photo (queued)" in d.text(), "the job was not made by the live handler"
    assert_posted_exactly_once(w, {OBAMA[0]: set(OBAMA)})
    assert d.stop()[0] == 0, d.text()[-3000:]
    print(f"live photo posted {took:.1f} s after it arrived")


async def _live_job(pool, chat: int, message: int) -> bool:
    async with pool.connection() as conn:
        return bool(await (await conn.execute(
            "SELECT 1 FROM media_jobs WHERE source_chat_id = %s AND source_message_id = %s",
            (chat, message))).fetchone())


async def _realtime(pool, chat: int) -> bool:
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT scan_mode FROM scan_checkpoints WHERE chat_id = %s",
                                        (chat,))).fetchone()
    return row is not None and row[0] == "realtime"


@pytest.mark.parametrize("request_name, error", [("GetUsersRequest", "ConnectionError"), ("GetStateRequest", "hang"),
                                                 ("GetDifferenceRequest", "ConnectionError")])
async def test_live_updates_are_handled_after_a_connect_that_broke_off(h, pool, request_name, error):
    """Telethon's connect() asks get_me, updates.GetState and GetDifference after its connection
    is up; whichever of them breaks off, live updates are handled once the account is connected."""
    a = await h.add_account(A)
    chat = h.server.add_chat("Family photos", members=[A])
    await h.watch(a, chat)
    h.server.fail(request_name, error)
    service = await h.service(sweep_interval=3600, connect_timeout=1.0)
    _, stop = await run_components(service)
    try:
        await eventually(lambda: _realtime(pool, chat), what="the backfill")
        live = h.server.post(chat, h.server.photo(FACES / "eileen_collins_01.jpg"))
        await eventually(lambda: _live_job(pool, chat, live), timeout=5, what="the live handler's job")
        assert service.realtime.received == 1
        assert request_name in h.server.requests()
    finally:
        await stop()


def backfill_cursor(w: ServedWorld, chat: int) -> tuple[int, str]:
    return w.sql("SELECT last_processed_message_id, scan_mode FROM scan_checkpoints WHERE chat_id = %s", chat)[0]


def test_kill_9_during_a_backfill_of_several_pages_loses_nothing_and_posts_once(world, tmp_path, db, daemons):  # noqa: F811
    w = world
    w.add_account(A)
    chat = w.add_chat("Archive", members=[A])
    w.watch(A, chat)
    # Three pages of history (Telethon reads 100 messages a page): Obama on the first, Biden on
    # the second, chatter to the end of the third.
    photos = {10: OBAMA[0], 40: OBAMA[1], 80: OBAMA[2], 120: BIDEN[0], 150: BIDEN[1], 190: BIDEN[2]}
    for i in range(1, 251):
        w.post(chat, photos.get(i), text=None if i in photos else f"chatter {i}", deliver=False)
    # The second page's answer never comes: the backfill stands half-way while the first page's
    # photos are downloaded, analysed and posted (the account is not paused, as by a flood wait).
    w.call(w.server.fail, "GetHistoryRequest", "hang", after=1)
    d = daemon(w, tmp_path, db)
    daemons.append(d.start())
    # Killed while Obama's topic is being filled, the backfill at its first page.
    wait_until(lambda: w.sql("SELECT count(*) FROM uploaded_media")[0][0] > 0, daemons=[d], timeout=60)
    time.sleep(random.Random(2024).uniform(0.0, 2.0))
    assert backfill_cursor(w, chat) == (100, "backfill")
    d.kill()
    pids = d.analysis_pids()
    wait_until(lambda: all(process_gone(pid) for pid in pids), timeout=10)
    daemons.append(d.start())
    wait_until(lambda: w.settled(len(photos)), daemons=[d], timeout=90)
    time.sleep(1.0)                                     # anything late would show now
    assert backfill_cursor(w, chat) == (250, "realtime")
    assert_posted_exactly_once(w, {OBAMA[0]: set(OBAMA), BIDEN[0]: set(BIDEN)})
    assert w.statuses() == {"done": len(photos)}
    assert d.stop()[0] == 0, d.text()[-3000:]
