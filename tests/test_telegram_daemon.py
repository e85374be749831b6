"""The whole daemon in a subprocess (tests/daemon_launcher.py, FA_TELEGRAM_SERVER) with real
Telethon clients against the fake Telegram server (tests/telegram_server.py) served from this
process (test_daemon.World), real PostgreSQL and the real dlib engine: lost answers to
topic creations and posts, and kill -9 at random moments; nothing lost, nothing posted twice."""

from __future__ import annotations

import random
import time

import pytest

from test_daemon import BIDEN, BOTH, NOBODY, OBAMA, World, assert_posted_exactly_once, db, daemons  # noqa: F401
from test_daemon_workers import Daemon, process_gone, wait_until

PHONE = "+15550001"
ServedWorld = World          # its name when it lived here


@pytest.fixture
def world(tmp_path, db, faces_dir):  # noqa: F811
    w = World(tmp_path, faces_dir, db, OBAMA + BIDEN + [BOTH] + NOBODY)
    yield w
    w.close()


def test_lost_answers_and_kill_9_post_everything_exactly_once(world, tmp_path, db, daemons):  # noqa: F811
    w = world
    # Telegram creates the first topic and accepts two posts, but the answers never arrive.
    w.call(w.server.fail, "CreateForumTopicRequest", "ConnectionError", accept=True)
    w.call(w.server.fail, "SendMediaRequest", "ConnectionError", accept=True, times=2)
    d = Daemon(tmp_path, db, "run", env=w.env | {"NUM_WORKERS": "1"})
    rng = random.Random(15)
    for _ in range(7):
        daemons.append(d.start())
        time.sleep(rng.uniform(2.0, 9.0))              # start-up takes ~3-5 s: kills land everywhere
        d.kill()
    pids = d.analysis_pids()
    wait_until(lambda: all(process_gone(pid) for pid in pids), timeout=5)
    daemons.append(d.start())
    wait_until(w.settled, daemons=[d], timeout=180)
    time.sleep(1.0)
    assert d.stop()[0] == 0, d.text()[-3000:]
    assert_posted_exactly_once(w)
    assert w.server.faults == []                      # every lost answer happened
