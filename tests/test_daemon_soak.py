"""A soak test: the whole daemon (a subprocess, role all, real dlib, real PostgreSQL on a server of
its own) against the fake Telegram server (test_daemon.World: real Telethon clients), while faults are injected at random: network cuts, flood
waits on downloads and posts, downloads that hang, kill -9 (and a restart), the database server
stopped and started again, and a poison video among the live messages. At the end every message
is done, or failed with its reason recorded (only the poison video), no post is missing or
doubled, and the run prints its counts.

FA_SOAK_SECONDS sets how long faults are injected (default 45 s, for CI); a longer run is a bench:
`FA_SOAK_SECONDS=900 FA_SOAK_SEED=7 .venv/bin/python -m pytest tests/test_daemon_soak.py -s`.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter

import psycopg

import database
from conftest import pg_ctl, pg_ctl_start
from test_daemon import BIDEN, BOTH, NOBODY, OBAMA, PHONE, World, assert_posted_exactly_once  # noqa: F401
from test_daemon import daemons, worlds  # noqa: F401
from test_daemon_workers import Daemon, wait_until

SOAK_SECONDS = float(os.environ.get("FA_SOAK_SECONDS", "45"))
SEED = int(os.environ.get("FA_SOAK_SEED", "16"))


class Server:
    """A PostgreSQL server of the test's own, to stop and start under the daemon."""

    def __init__(self, pgdata):
        self.pgdata = pgdata
        self.server = database.embedded_server(pgdata, cleanup_mode="delete")

    def stop(self) -> None:
        pg_ctl(self.server, "-w", "-m", "fast", "stop")

    def start(self) -> None:
        pg_ctl_start(self.server)

    def close(self) -> None:
        try:
            pg_ctl(self.server, "-w", "-m", "immediate", "stop")
        except Exception:  # already stopped
            pass
        self.server.cleanup()


def test_random_faults_lose_nothing_and_post_nothing_twice(tmp_path, faces_dir, worlds, daemons):  # noqa: F811
    os.chmod(tmp_path, 0o755)
    server = Server(tmp_path / "pg")
    try:
        admin = server.server.get_uri("postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE fa")
        db = psycopg.conninfo.make_conninfo(admin, dbname="fa")
        database.migrate(db)
        database.ensure_engine(db, "dlib", 128)
        w = worlds(tmp_path, faces_dir, db, OBAMA[:2] + BIDEN[:2] + NOBODY)
        live = [OBAMA[2], BIDEN[2], BOTH]
        corrupt = tmp_path / "corrupt.mp4"                 # a poison video: an mp4 header, then noise
        corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + random.Random(SEED).randbytes(4000))
        d = Daemon(tmp_path, db, "run", env=w.env | {"NUM_WORKERS": "1", "HEALTH_OUTAGE_SECONDS": "10"})
        daemons.append(d.start())
        rng = random.Random(SEED)
        faults: Counter[str] = Counter()
        deadline = time.monotonic() + SOAK_SECONDS
        while time.monotonic() < deadline:
            fault = rng.choice(["network", "flood", "hang", "kill", "database", "live", "live"])
            faults[fault] += 1
            if fault == "network":
                w.set_online(False)
                time.sleep(rng.uniform(3, 12))
                w.set_online(True)
            elif fault == "flood":
                request = rng.choice(["GetFileRequest", "SendMediaRequest"])   # a download, a post
                w.call(w.server.fail, request, f"FLOOD_WAIT_{rng.randint(2, 5)}")
            elif fault == "hang":
                w.call(w.server.fail, "GetFileRequest", "hang")
            elif fault == "kill":
                d.kill()
                time.sleep(rng.uniform(0.5, 2))
                d.start()
            elif fault == "database":
                server.stop()
                time.sleep(rng.uniform(2, 8))
                server.start()
            elif live:
                w.post(w.chat, live.pop(0))
            elif "corrupt" not in faults:
                faults["corrupt"] += 1
                post_corrupt(w, corrupt)
            time.sleep(rng.uniform(0.5, 3))
            assert d.proc.poll() is None, f"the daemon exited ({d.proc.returncode}):\n" + d.text()[-4000:]
        for name in live:                                   # whatever the dice left out
            w.post(w.chat, name)
        if "corrupt" not in faults:
            post_corrupt(w, corrupt)
        w.call(w.server.faults.clear)
        w.set_online(True)
        wait_until(w.settled, daemons=[d], timeout=300)
        time.sleep(1.0)
        assert d.stop()[0] == 0

        with psycopg.connect(db) as conn:
            jobs = Counter(s for (s,) in conn.execute("SELECT status FROM media_jobs"))
            failed = conn.execute("SELECT source_message_id, last_error FROM media_jobs WHERE status = 'failed'").fetchall()
            recorded = conn.execute("SELECT count(*) FROM processing_errors WHERE job_id IN "
                                    "(SELECT id FROM media_jobs WHERE status = 'failed')").fetchone()[0]
            posted = conn.execute("SELECT count(*) FROM uploaded_media WHERE status = 'posted'").fetchone()[0]
        [(bad_message, why)] = failed
        assert w.files[(w.chat, bad_message)] == "corrupt.mp4" and why.startswith("MediaError") and recorded >= 1
        del w.files[(w.chat, bad_message)]
        assert_posted_exactly_once_but_the_corrupt(w, jobs)
        print(f"\nsoak (seed {SEED}, {SOAK_SECONDS:.0f} s of faults: "
              f"{', '.join(f'{k} {v}' for k, v in sorted(faults.items()))}): {sum(jobs.values())} messages, "
              f"{jobs['done']} done, {jobs['failed']} failed with a reason (the poison video), "
              f"{jobs['skipped']} skipped; {posted} posts, 0 missing, 0 doubled")
    finally:
        for d in daemons:
            d.kill()
        server.close()


def post_corrupt(w: World, video) -> None:
    media = w.call(w.server.video, video)
    message = w.call(w.server.post, w.chat, media, text="corrupt.mp4")
    w.files[(w.chat, message)] = "corrupt.mp4"


def assert_posted_exactly_once_but_the_corrupt(w: World, jobs: Counter) -> None:
    """assert_posted_exactly_once, for a world whose poison video's job failed (with its reason)."""
    assert jobs == Counter({"done": len(w.files), "failed": 1}), jobs
    with psycopg.connect(w.conninfo) as conn:
        conn.execute("DELETE FROM media_jobs WHERE status = 'failed'")   # the poison video's, checked above
    assert_posted_exactly_once(w)
