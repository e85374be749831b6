"""The daemon as a process (`python main.py run --role worker`, through tests/daemon_launcher.py)
on a real PostgreSQL with the real dlib engine: stopping, killing, sharing, updating, and the
database going away under it. The jobs are a Telegram Desktop export's (no Telegram needed);
test_daemon.py runs the whole daemon against the fake Telegram.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

import database
import exports
from conftest import ROOT, create_database, pg_ctl, pg_ctl_start
from test_import import PHOTOS, build_export

LAUNCHER = ROOT / "tests" / "daemon_launcher.py"
SMALL = [p for p in PHOTOS if p[1] != "group_situation_room_2011.jpg"]   # the slow one left out


class Daemon:
    """One daemon process; its log goes to a file (a pipe nobody reads would block it)."""

    def __init__(self, base: Path, conninfo: str, *args: str, env: dict[str, str] | None = None,
                 name: str = "daemon"):
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
        self.env = {k: v for k, v in os.environ.items()
                    if k in {"PATH", "HOME", "LANG", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "XDG_RUNTIME_DIR"}}
        self.env |= {"POSTGRES_HOST": params["host"], "POSTGRES_DB": params["dbname"],
                     "POSTGRES_USER": params["user"], "POSTGRES_PASSWORD": "unused-with-trust-auth",
                     "FACE_ENGINE": "dlib", "NUM_WORKERS": "2", "DATA_DIR": str(base / "data"),
                     "LOG_LEVEL": "INFO"} | (env or {})
        self.base = base
        self.args = args
        self.log = base / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Daemon:
        with open(self.log, "a") as log:
            log.write(f"\n===== start {time.time():.3f}\n")
            self.proc = subprocess.Popen(
                [sys.executable, str(LAUNCHER), "--env-file", str(self.base / "none.env"), *self.args],
                cwd=self.base, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def text(self) -> str:
        return self.log.read_text()

    def wait_log(self, pattern: str, timeout: float = 60, after: int = 0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text()[after:])
            if found:
                return found
            if self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited ({self.proc.returncode}) before {pattern!r}:\n"
                                     + self.text()[-4000:])
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n" + self.text()[-4000:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, float]:
        """Send `sig`; return (exit code, seconds it took to exit)."""
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def analysis_pids(self) -> list[int]:
        return [int(p) for found in re.findall(r"processes ready \(pids ([\d, ]+)\)", self.text())
                for p in found.split(", ")]


def jobs(conninfo: str) -> dict[str, int]:
    with psycopg.connect(conninfo) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM media_jobs GROUP BY status").fetchall())


def wait_until(predicate, timeout: float = 90, interval: float = 0.2, daemons=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for d in daemons:
            if d.proc.poll() is not None:
                raise AssertionError(f"{d.log.name} exited with {d.proc.returncode}:\n" + d.text()[-4000:])
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s" + "".join(f"\n--- {d.log.name}\n" + d.text()[-3000:] for d in daemons))


def process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] == "Z"
    except FileNotFoundError:
        return True


def assert_consistent(conninfo: str, n_jobs: int) -> None:
    """Nothing lost, nothing stuck, nothing twice."""
    with psycopg.connect(conninfo) as conn:
        statuses = conn.execute("SELECT status, count(*), count(lease_owner) FROM media_jobs GROUP BY status").fetchall()
        twice = conn.execute(
            """SELECT media_item_id FROM face_embeddings GROUP BY media_item_id
               HAVING count(DISTINCT job_id) > 1""").fetchall()
        items = conn.execute("SELECT status, count(*) FROM media_items GROUP BY status").fetchall()
    assert statuses == [("done", n_jobs, 0)], statuses
    assert twice == [], "a media item's faces were stored by two jobs"
    assert dict(items) == {"analysed": len({name for _, name in SMALL})}


@pytest.fixture
def staged(tmp_path, admin_conninfo, template_db, faces_dir):
    """A database whose queue holds an export's jobs, staged and waiting for workers."""
    db = create_database(admin_conninfo, template_db)
    database.ensure_engine(db, "dlib", 128)
    export = build_export(tmp_path / "export", faces_dir, SMALL, video=False)
    asyncio.run(enqueue(db, export))
    os.chmod(tmp_path, 0o755)
    return db


async def enqueue(conninfo: str, export: Path) -> None:
    pool = database.async_pool(conninfo, min_size=1, max_size=2)
    await pool.open()
    try:
        await exports.enqueue(pool, exports.read_export(export))
    finally:
        await pool.close()


@pytest.fixture
def daemons():
    started: list[Daemon] = []
    yield started
    for d in started:
        d.kill()


# ---------------------------------------------------------------------------------------------


def test_health_sigterm_and_the_update_flag_stop_the_daemon_cleanly_and_lose_nothing(tmp_path, staged, daemons):
    """One queue, three ways a daemon stops: `main.py health` follows the heartbeat (unhealthy
    before the first start and once it is stale); SIGTERM mid-run exits 0 in time, holding no
    job and leaving no analysis process; the update flag stops the next run cleanly, once; the
    run after that finishes the rest."""
    d = Daemon(tmp_path, staged, "run", "--role", "worker")
    health = [sys.executable, str(ROOT / "main.py"), "--env-file", str(tmp_path / "none.env"), "health"]

    def check(*extra):
        return subprocess.run(health + list(extra), cwd=tmp_path, env=d.env, capture_output=True, text=True)

    assert check().returncode == 1                              # never started
    daemons.append(d.start())
    wait_until(lambda: check().returncode == 0, timeout=60, daemons=[d])
    d.wait_log(r"job \d+ .*: done")
    code, took = d.stop(signal.SIGTERM)
    assert code == 0, d.text()[-3000:]
    assert took < 30
    assert "stopping: received SIGTERM" in d.text()
    with psycopg.connect(staged) as conn:
        leased = conn.execute("SELECT count(*) FROM media_jobs WHERE lease_owner IS NOT NULL").fetchone()[0]
    assert leased == 0                                          # finished or handed back, none held
    assert all(process_gone(pid) for pid in d.analysis_pids())
    time.sleep(1.2)
    stale = check("--max-age", "1")
    assert stale.returncode == 1 and "stuck or stopped" in stale.stdout

    before = len(d.text())
    daemons.append(d.start())                                   # the next start goes on ...
    d.wait_log(r"running: ", after=before)
    flag = tmp_path / "data" / "update_flag" / "update_available"
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.write_text("new commit 0123abcd")                      # ... until an update is announced
    code = d.proc.wait(30)
    assert code == 0
    assert re.search(r"update flag .*update_available is set \(new commit 0123abcd\)", d.text())
    assert not flag.exists()                                    # the next start runs normally
    daemons.append(d.start())
    wait_until(lambda: jobs(staged) == {"done": len(SMALL)}, daemons=[d])
    assert d.proc.poll() is None
    assert d.stop()[0] == 0
    assert_consistent(staged, len(SMALL))


def test_kill_9_at_random_moments_then_restart_loses_nothing(tmp_path, staged, daemons):
    rng = random.Random(6)
    d = Daemon(tmp_path, staged, "run", "--role", "worker", env={"NUM_WORKERS": "1"})
    for _ in range(10):
        daemons.append(d.start())
        time.sleep(rng.uniform(1.0, 3.5))
        d.kill()
    pids = d.analysis_pids()
    assert pids
    wait_until(lambda: all(process_gone(pid) for pid in pids), timeout=5)   # no orphans computing on
    before = len(d.text())
    daemons.append(d.start())
    wait_until(lambda: jobs(staged) == {"done": len(SMALL)}, daemons=[d], timeout=120)
    # The killed daemons may have finished everything: stop this one once it runs, not while it
    # is still importing (a SIGTERM before its handlers are set ends it by the signal).
    d.wait_log(r"running: ", after=before)
    code, _ = d.stop()
    assert code == 0, d.text()[-3000:]
    assert_consistent(staged, len(SMALL))


def test_a_second_worker_process_shares_the_queue(tmp_path, staged, daemons):
    first = Daemon(tmp_path, staged, "run", "--role", "worker", env={"NUM_WORKERS": "1"}, name="first")
    second = Daemon(tmp_path, staged, "run", "--role", "worker", env={"NUM_WORKERS": "1"}, name="second")
    daemons += [first.start(), second.start()]
    wait_until(lambda: jobs(staged) == {"done": len(SMALL)}, daemons=[first, second])
    assert first.stop()[0] == 0 and second.stop()[0] == 0
    done = [set(re.findall(r"job (\d+) \(chat -?\d+ message \d+\): done", d.text())) for d in (first, second)]
    assert done[0] and done[1], "both processes did some of the work"
    assert not done[0] & done[1], "no job was done by both"
    assert len(done[0] | done[1]) == len(SMALL)
    assert_consistent(staged, len(SMALL))


def test_the_database_restarting_under_the_daemon_is_survived(tmp_path, faces_dir, daemons):
    """A dedicated server, stopped and started again while the worker runs."""
    pgdata = tmp_path / "pg"
    server = database.embedded_server(pgdata, cleanup_mode="delete")
    try:
        admin = server.get_uri("postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE fa")
        db = psycopg.conninfo.make_conninfo(admin, dbname="fa")
        database.migrate(db)
        database.ensure_engine(db, "dlib", 128)
        asyncio.run(enqueue(db, build_export(tmp_path / "export", faces_dir, SMALL, video=False)))
        d = Daemon(tmp_path, db, "run", "--role", "worker", env={"NUM_WORKERS": "1"})
        daemons.append(d.start())
        d.wait_log(r"job \d+ .*: done")
        pg_ctl(server, "-w", "-m", "fast", "stop")
        time.sleep(4)                                           # longer than a lease
        assert d.proc.poll() is None, d.text()[-3000:]
        pg_ctl_start(server)
        wait_until(lambda: jobs(db) == {"done": len(SMALL)}, daemons=[d], timeout=120)
        assert d.stop()[0] == 0
        assert re.search(r"database is unavailable|error connecting", d.text())   # it did see the outage
        assert_consistent(db, len(SMALL))
    finally:
        for d in daemons:
            d.kill()
        try:
            pg_ctl(server, "-w", "-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass
        server.cleanup()
