"""The job queue on a real PostgreSQL: claiming, leases, retries, deduplication, stopping.

The point of these tests is the queue's mechanics, so most of them analyse with a stand-in
(`Analyser` below) that returns no faces, sleeps or raises on cue; the faces themselves are
the pipeline tests' business (test_import.py, test_daemon.py). One test here runs the real
analysis processes on a real photo.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest

from processing_queue import (Job, JobQueue, JobSkipped, LeaseLost, RetryLater, RetryPolicy,
                              WorkerConfig, WorkerPool)
from media_processor import MediaError

PHOTO = "barack_obama_01.jpg"


# --- helpers ---------------------------------------------------------------------------------


STAGING = Path(tempfile.mkdtemp(prefix="fa-queue-"))


def add_job(conninfo: str, message_id: int, *, chat_id: int = -1001, status: str = "staged",
            media_key: str | None = None, staged_path: str | None = None,
            staged_owned: bool = True, account_id: int | None = None, media_type: str = "photo",
            file_size: int | None = None) -> int:
    """A job; a staged one gets a (dummy) file unless `staged_path` is given."""
    if status == "staged" and staged_path is None:
        staged_path = str(STAGING / f"{uuid.uuid4().hex}.jpg")
        Path(staged_path).write_bytes(b"stand-in")
    with psycopg.connect(conninfo) as conn:
        return conn.execute(
            """INSERT INTO media_jobs (source_chat_id, source_message_id, account_id, media_key,
                   media_type, status, staged_path, staged_owned, file_size)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            (chat_id, message_id, account_id, media_key or f"photo:{chat_id}:{message_id}", media_type,
             status, staged_path if status == "staged" else None, staged_owned, file_size)).fetchone()[0]


def add_account(conninfo: str, phone: str) -> int:
    with psycopg.connect(conninfo) as conn:
        return conn.execute(
            "INSERT INTO telegram_accounts (phone_number, session_file_path) VALUES (%s, %s) RETURNING id",
            (phone, f"/sessions/{phone}.session")).fetchone()[0]


def job_row(conninfo: str, job_id: int) -> dict:
    with psycopg.connect(conninfo, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute("SELECT * FROM media_jobs WHERE id = %s", (job_id,)).fetchone()


def errors(conninfo: str) -> list[dict]:
    with psycopg.connect(conninfo, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute("SELECT * FROM processing_errors ORDER BY id").fetchall()


def metrics(conninfo: str) -> dict[str, int]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute("SELECT metric_name, sum(metric_value) FROM processing_metrics GROUP BY 1").fetchall()
    return {name: int(value) for name, value in rows}


class Analyser:
    """Stands in for the face analysis: no faces, after `delay` seconds, or raises `errors[path]`."""

    def __init__(self, delay: float = 0.0, errors: dict | None = None):
        self.delay = delay
        self.errors = errors or {}
        self.calls: list[str] = []

    async def analyse(self, path, kind):
        self.calls.append(str(path))
        await asyncio.sleep(self.delay)
        if str(path) in self.errors:
            raise self.errors[str(path)]
        return []


class Downloader:
    """The Telegram boundary: copies a photo into staging, or raises `raises` once per job."""

    def __init__(self, staging: Path, photo: Path, raises: dict | None = None):
        self.staging = staging
        self.photo = photo
        self.raises = dict(raises or {})
        self.calls: list[int] = []

    async def download(self, job):
        self.calls.append(job.id)
        if job.id in self.raises:
            raise self.raises.pop(job.id)
        target = self.staging / f"{job.id}.jpg"
        shutil.copyfile(self.photo, target)
        return target


@pytest.fixture
def matcher():
    from identity_matcher import IdentityMatcher, MatchParams
    return IdentityMatcher(MatchParams.for_engine("dlib"))


FAST = RetryPolicy(max_attempts=3, backoff_base=0.2, backoff_cap=1.0, jitter=0.0,
                   permanent=(MediaError,), deferred=(RetryLater,))


def make_pool(pool, *, lease: float = 5.0, policy: RetryPolicy = FAST, owner: str = "test", **kw) -> WorkerPool:
    config = WorkerConfig(analysis_slots=kw.pop("slots", 2), download_slots=kw.pop("download_slots", 2),
                          poll_interval=0.1,
                          grace=kw.pop("grace", 5.0), metrics_interval=kw.pop("metrics_interval", 60.0),
                          max_media_bytes=kw.pop("max_media_bytes", None), staging_dir=kw.pop("staging_dir", None),
                          download_timeout=kw.pop("download_timeout", 30.0))
    return WorkerPool(JobQueue(pool, owner=owner, lease_seconds=lease), config=config, policy=policy, **kw)


async def run_until(workers: WorkerPool, conninfo: str, job_ids: list[int], statuses=("done", "failed", "skipped"),
                    timeout: float = 30.0) -> None:
    """Run `workers` until every job in `job_ids` has one of `statuses`, then stop them."""
    task = asyncio.create_task(workers.run())
    try:
        async with asyncio.timeout(timeout):
            while True:
                rows = await workers.queue.statuses(job_ids)
                if all(rows.get(j) in statuses for j in job_ids):
                    break
                if task.done():
                    task.result()
                await asyncio.sleep(0.05)
    finally:
        workers.stop()
        await task


# --- claiming and leases ---------------------------------------------------------------------


async def test_two_claimers_never_get_the_same_job(pool, dlib_db):
    ids = [add_job(dlib_db, i) for i in range(20)]
    a, b = JobQueue(pool, owner="a"), JobQueue(pool, owner="b")
    got = await asyncio.gather(*(q.claim_staged(3) for q in (a, b, a, b, a, b, a, b)))
    claimed = [job.id for batch in got for job in batch]
    assert len(claimed) == len(set(claimed)) == 20
    assert sorted(claimed) == ids
    assert await a.claim_staged(5) == []


async def test_a_dead_workers_job_comes_back_when_its_lease_runs_out(pool, dlib_db):
    job_id = add_job(dlib_db, 1)
    dead = JobQueue(pool, owner="dead", lease_seconds=0.5)
    (job,) = await dead.claim_staged(5)
    alive = JobQueue(pool, owner="alive", lease_seconds=30)
    assert await alive.claim_staged(5) == []          # still leased
    await asyncio.sleep(0.7)
    (again,) = await alive.claim_staged(5)
    assert again.id == job_id and again.claims == 2
    with pytest.raises(LeaseLost):                    # the dead one wakes up: it owns nothing now
        await dead.finish(job)
    assert job_row(dlib_db, job_id)["status"] == "staged"
    assert job_row(dlib_db, job_id)["lease_owner"] == "alive"


async def test_the_heartbeat_keeps_a_long_job_leased(pool, dlib_db, matcher):
    job_id = add_job(dlib_db, 1)
    workers = make_pool(pool, lease=1.0, analyser=Analyser(delay=2.5), matcher=matcher)
    task = asyncio.create_task(workers.run())
    while not workers._running:
        await asyncio.sleep(0.02)
    rival = JobQueue(pool, owner="rival")
    for _ in range(20):                                # 2 s: well past the lease
        assert await rival.claim_staged(5) == []
        await asyncio.sleep(0.1)
    while (await rival.statuses([job_id]))[job_id] != "done":
        await asyncio.sleep(0.05)
    workers.stop()
    await task
    row = job_row(dlib_db, job_id)
    assert row["status"] == "done" and row["claims"] == 1


async def test_a_job_claimed_too_often_without_finishing_is_failed(pool, dlib_db, matcher):
    job_id = add_job(dlib_db, 1)
    with psycopg.connect(dlib_db) as conn:
        conn.execute("UPDATE media_jobs SET claims = 5 WHERE id = %s", (job_id,))
    analyser = Analyser()
    workers = make_pool(pool, analyser=analyser, matcher=matcher,
                        policy=RetryPolicy(max_claims=5, permanent=(MediaError,)))
    await run_until(workers, dlib_db, [job_id])
    assert analyser.calls == []
    row = job_row(dlib_db, job_id)
    assert row["status"] == "failed" and "claimed 6 times" in row["last_error"]


# --- retries and errors ----------------------------------------------------------------------


async def test_transient_errors_are_retried_with_backoff_then_failed(pool, dlib_db, matcher, tmp_path):
    flaky = tmp_path / "flaky.jpg"
    flaky.write_bytes(b"x")
    job_id = add_job(dlib_db, 1, staged_path=str(flaky))
    analyser = Analyser(errors={str(flaky): OSError("disk hiccup")})
    workers = make_pool(pool, analyser=analyser, matcher=matcher)
    await run_until(workers, dlib_db, [job_id], timeout=20)
    assert len(analyser.calls) == 3                    # max_attempts
    row = job_row(dlib_db, job_id)
    assert row["status"] == "failed" and row["attempts"] == 3
    assert "disk hiccup" in row["last_error"]
    rows = errors(dlib_db)
    assert [r["error_context"]["will_retry"] for r in rows] == [True, True, False]
    assert all(r["job_id"] == job_id and r["error_type"] == "OSError" for r in rows)
    assert [r["error_context"]["attempt"] for r in rows] == [1, 2, 3]


async def test_a_retried_job_waits_for_its_backoff(pool, dlib_db, matcher, tmp_path):
    flaky = tmp_path / "flaky.jpg"
    flaky.write_bytes(b"x")
    job_id = add_job(dlib_db, 1, staged_path=str(flaky))
    slow = RetryPolicy(max_attempts=3, backoff_base=60, jitter=0.0)
    workers = make_pool(pool, analyser=Analyser(errors={str(flaky): OSError("x")}), matcher=matcher, policy=slow)
    task = asyncio.create_task(workers.run())
    while not errors(dlib_db):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    workers.stop()
    await task
    row = job_row(dlib_db, job_id)
    assert row["status"] == "staged" and row["attempts"] == 1 and row["lease_owner"] is None
    with psycopg.connect(dlib_db) as conn:
        wait = conn.execute("SELECT extract(epoch FROM run_after - now()) FROM media_jobs").fetchone()[0]
    assert 55 < wait <= 60


async def test_bad_media_fails_at_once_and_its_copies_are_not_analysed_again(pool, dlib_db, matcher, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    first = add_job(dlib_db, 1, media_key="sha256:bad", staged_path=str(bad), staged_owned=False)
    analyser = Analyser(errors={str(bad): MediaError(f"{bad}: truncated JPEG")})
    workers = make_pool(pool, analyser=analyser, matcher=matcher)
    await run_until(workers, dlib_db, [first])
    copy = add_job(dlib_db, 2, media_key="sha256:bad", staged_path=str(bad), staged_owned=False)
    await run_until(make_pool(pool, analyser=analyser, matcher=matcher), dlib_db, [copy])
    assert len(analyser.calls) == 1
    assert job_row(dlib_db, first)["status"] == job_row(dlib_db, copy)["status"] == "failed"
    assert job_row(dlib_db, first)["attempts"] == 0    # permanent: no attempt wasted on retries
    (err, copy_err) = errors(dlib_db)
    assert err["error_type"] == "MediaError" and err["job_id"] == first
    assert err["error_context"]["source_message_id"] == 1 and err["error_context"]["media_key"] == "sha256:bad"
    assert copy_err["job_id"] == copy and "could not be read in an earlier job" in copy_err["error_message"]
    assert bad.exists()                                # the operator's file is never deleted


async def test_a_lost_connection_is_retried_without_counting_attempts(pool, dlib_db, matcher, faces_dir, tmp_path):
    account = add_account(dlib_db, "+1")
    job_id = add_job(dlib_db, 1, status="queued", account_id=account)
    downloader = Downloader(tmp_path, faces_dir / PHOTO, raises={job_id: ConnectionError("Connection to Telegram failed")})
    policy = RetryPolicy(backoff_base=0.3, jitter=0.0, outages=(ConnectionError,))
    workers = make_pool(pool, downloader=downloader, account_ids=lambda: [account], analyser=Analyser(),
                        matcher=matcher, policy=policy)
    await run_until(workers, dlib_db, [job_id])
    assert downloader.calls == [job_id, job_id]
    row = job_row(dlib_db, job_id)
    assert row["status"] == "done" and row["attempts"] == 0


class DeadlockOnce:
    """The real matcher, whose first call first meets a real deadlock: another transaction holds
    a lock this one then asks for, while it waits for the job row this one has locked.
    PostgreSQL breaks the cycle by rolling this one back (its deadlock_timeout is the shorter)."""

    def __init__(self, matcher, conninfo: str):
        self.matcher, self.conninfo, self.calls = matcher, conninfo, 0

    async def assign(self, conn, media_item_id, faces, *, job_id=None):
        self.calls += 1
        if self.calls == 1:
            rival = await psycopg.AsyncConnection.connect(self.conninfo)
            try:
                await rival.execute("SET deadlock_timeout = '10s'")
                await rival.execute("BEGIN")
                await rival.execute("SELECT pg_advisory_xact_lock(4242)")
                waiting = asyncio.create_task(rival.execute(
                    "SELECT 1 FROM media_jobs WHERE id = %s FOR UPDATE", (job_id,)))
                async with asyncio.timeout(5):
                    while not (await (await conn.execute(
                            "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted",
                            (rival.info.backend_pid,))).fetchone())[0]:
                        await asyncio.sleep(0.02)
                await conn.execute("SET LOCAL deadlock_timeout = '50ms'")
                try:
                    await conn.execute("SELECT pg_advisory_xact_lock(4242)")
                finally:
                    await waiting
                    await rival.execute("ROLLBACK")
            finally:
                await rival.close()
        return await self.matcher.assign(conn, media_item_id, faces, job_id=job_id)


async def test_a_deadlock_with_another_worker_is_stored_again_at_once(pool, dlib_db, matcher):
    job_id = add_job(dlib_db, 1)
    contended = DeadlockOnce(matcher, dlib_db)
    workers = make_pool(pool, lease=30.0, analyser=Analyser(), matcher=contended)
    started = asyncio.get_running_loop().time()
    await run_until(workers, dlib_db, [job_id])
    assert contended.calls == 2                       # rolled back once, then stored
    assert asyncio.get_running_loop().time() - started < 10   # not after the 30 s lease
    row = job_row(dlib_db, job_id)
    assert row["status"] == "done" and row["attempts"] == 0 and row["claims"] == 1
    assert errors(dlib_db) == []


async def test_a_missing_staged_file_is_downloaded_again_and_a_missing_export_file_fails(
        pool, dlib_db, matcher, faces_dir, tmp_path):
    account = add_account(dlib_db, "+1")
    lost = add_job(dlib_db, 1, account_id=account, staged_path=str(tmp_path / "gone.jpg"))
    moved = add_job(dlib_db, 2, staged_path=str(tmp_path / "moved.jpg"), staged_owned=False)
    downloader = Downloader(tmp_path, faces_dir / PHOTO)
    workers = make_pool(pool, downloader=downloader, account_ids=lambda: [account], analyser=Analyser(),
                        matcher=matcher)
    await run_until(workers, dlib_db, [lost, moved])
    assert downloader.calls == [lost]
    assert job_row(dlib_db, lost)["status"] == "done"
    row = job_row(dlib_db, moved)
    assert row["status"] == "failed" and "moved.jpg is gone" in row["last_error"]


# --- downloads -------------------------------------------------------------------------------


async def test_a_flood_wait_pauses_only_that_account_and_costs_no_attempt(pool, dlib_db, matcher, faces_dir, tmp_path):
    slow_account, other_account = add_account(dlib_db, "+1"), add_account(dlib_db, "+2")
    flooded = add_job(dlib_db, 1, status="queued", account_id=slow_account)
    later = add_job(dlib_db, 2, status="queued", account_id=slow_account)
    other = add_job(dlib_db, 3, status="queued", account_id=other_account)
    from telethon.errors import FloodWaitError
    downloader = Downloader(tmp_path, faces_dir / PHOTO,
                            raises={flooded: FloodWaitError(request=None, capture=3600)})
    workers = make_pool(pool, downloader=downloader, account_ids=lambda: [slow_account, other_account],
                        analyser=Analyser(), matcher=matcher, download_slots=1,
                        policy=RetryPolicy(deferred=(RetryLater, FloodWaitError)))
    await run_until(workers, dlib_db, [other])
    await asyncio.sleep(0.3)
    row = job_row(dlib_db, flooded)
    assert row["status"] == "queued" and row["attempts"] == 0 and "FloodWait" in row["last_error"]
    assert job_row(dlib_db, later)["status"] == "queued"       # same account: paused too
    assert later not in downloader.calls
    assert job_row(dlib_db, other)["status"] == "done"
    with psycopg.connect(dlib_db) as conn:
        paused = conn.execute("SELECT id FROM telegram_accounts WHERE flood_wait_until > now() + interval '50 minutes'").fetchall()
    assert paused == [(slow_account,)]
    assert errors(dlib_db) == []                                # waiting is not an error


async def test_downloads_then_analysis_then_the_staged_file_is_removed(pool, dlib_db, matcher, faces_dir, tmp_path):
    account = add_account(dlib_db, "+1")
    ids = [add_job(dlib_db, i, status="queued", account_id=account) for i in range(4)]
    big = add_job(dlib_db, 9, status="queued", account_id=account, file_size=300 * 2**20)
    downloader = Downloader(tmp_path, faces_dir / PHOTO)
    analyser = Analyser()
    workers = make_pool(pool, downloader=downloader, account_ids=lambda: [account], analyser=analyser,
                        matcher=matcher, max_media_bytes=200 * 2**20)
    await run_until(workers, dlib_db, ids + [big])
    assert sorted(downloader.calls) == ids                     # the big one was never fetched
    assert [job_row(dlib_db, i)["status"] for i in ids] == ["done"] * 4
    assert job_row(dlib_db, big)["status"] == "skipped" and "MAX_MEDIA_SIZE_MB" in job_row(dlib_db, big)["last_error"]
    assert sorted(analyser.calls) == sorted(str(tmp_path / f"{i}.jpg") for i in ids)
    assert list(tmp_path.iterdir()) == []                     # staged files removed once done


async def test_the_same_media_in_two_messages_is_analysed_once(pool, dlib_db, matcher, tmp_path):
    files = []
    for i in range(2):
        files.append(tmp_path / f"copy{i}.jpg")
        files[-1].write_bytes(b"same")
    ids = [add_job(dlib_db, i, media_key="sha256:same", staged_path=str(f)) for i, f in enumerate(files)]
    analyser = Analyser(delay=0.3)
    workers = make_pool(pool, analyser=analyser, matcher=matcher)
    await run_until(workers, dlib_db, ids)
    assert len(analyser.calls) == 1
    rows = [job_row(dlib_db, i) for i in ids]
    assert [r["status"] for r in rows] == ["done", "done"]
    assert rows[0]["media_item_id"] == rows[1]["media_item_id"] is not None
    with psycopg.connect(dlib_db) as conn:
        assert conn.execute("SELECT media_key, status, source_message_id FROM media_items").fetchall() == [
            ("sha256:same", "analysed", 0)]
    assert not any(f.exists() for f in files)
    assert workers.stats.jobs_deduplicated == 1


async def test_a_queued_job_whose_media_is_known_is_not_downloaded(pool, dlib_db, matcher, faces_dir, tmp_path):
    account = add_account(dlib_db, "+1")
    (tmp_path / "x.jpg").write_bytes(b"x")
    staged = add_job(dlib_db, 1, media_key="photo:77", staged_path=str(tmp_path / "x.jpg"))
    await run_until(make_pool(pool, analyser=Analyser(), matcher=matcher), dlib_db, [staged])
    forwarded = add_job(dlib_db, 2, chat_id=-1002, status="queued", account_id=account, media_key="photo:77")
    downloader = Downloader(tmp_path, faces_dir / PHOTO)
    await run_until(make_pool(pool, downloader=downloader, account_ids=lambda: [account], analyser=Analyser(),
                              matcher=matcher), dlib_db, [forwarded])
    assert downloader.calls == []
    assert job_row(dlib_db, forwarded)["status"] == "done"


# --- stopping --------------------------------------------------------------------------------


async def test_stopping_lets_running_jobs_finish_within_the_grace(pool, dlib_db, matcher):
    ids = [add_job(dlib_db, i) for i in range(2)]
    workers = make_pool(pool, analyser=Analyser(delay=1.0), matcher=matcher, grace=10)
    task = asyncio.create_task(workers.run())
    while len(workers._running) < 2:
        await asyncio.sleep(0.02)
    workers.stop()
    await task
    assert [job_row(dlib_db, i)["status"] for i in ids] == ["done", "done"]


async def test_stopping_hands_back_jobs_that_do_not_finish_in_time(pool, dlib_db, matcher):
    ids = [add_job(dlib_db, i) for i in range(3)]
    workers = make_pool(pool, analyser=Analyser(delay=30.0), matcher=matcher, grace=0.5, slots=2)
    task = asyncio.create_task(workers.run())
    while len(workers._running) < 2:
        await asyncio.sleep(0.02)
    started = asyncio.get_running_loop().time()
    workers.stop()
    await task
    assert asyncio.get_running_loop().time() - started < 3
    rows = [job_row(dlib_db, i) for i in ids]
    assert [r["status"] for r in rows] == ["staged"] * 3
    assert all(r["lease_owner"] is None and r["claims"] == 0 and r["attempts"] == 0 for r in rows)
    (again, *_) = await JobQueue(pool, owner="next").claim_staged(3)   # claimable at once
    assert again.id in ids


# --- metrics and housekeeping ----------------------------------------------------------------


async def test_metrics_for_the_dashboard(pool, dlib_db, matcher, tmp_path):
    ids = [add_job(dlib_db, i) for i in range(3)]
    add_job(dlib_db, 10, status="queued")
    workers = make_pool(pool, analyser=Analyser(), matcher=matcher, metrics_interval=0.2)
    await run_until(workers, dlib_db, ids)
    found = metrics(dlib_db)
    assert found["jobs_done"] == 3
    assert found["queue_queued"] >= 1 and found["queue_depth"] >= 1
    with psycopg.connect(dlib_db) as conn:
        depth_rows = conn.execute("SELECT count(*) FROM processing_metrics WHERE metric_name = 'queue_depth'").fetchone()[0]
    assert depth_rows == 1                               # one gauge a minute, not one per report


async def test_only_the_daemons_own_leftover_staged_files_are_removed_at_start(pool, dlib_db, tmp_path):
    account = add_account(dlib_db, "+1")
    done = add_job(dlib_db, 1, status="queued", account_id=account)
    waiting = add_job(dlib_db, 2, status="queued", account_id=account)
    interrupted = add_job(dlib_db, 3, status="queued", account_id=account)
    exported = add_job(dlib_db, 4, status="staged", staged_path=str(tmp_path / "4.jpg"), staged_owned=False)
    with psycopg.connect(dlib_db) as conn:
        conn.execute("UPDATE media_jobs SET status = 'done', staged_path = %s WHERE id = %s",
                     (str(tmp_path / f"{done}.jpg"), done))
        conn.execute("UPDATE media_jobs SET status = 'done' WHERE id = %s", (exported,))
    names = {f"{done}.jpg": "removed: its job is over and this is its file",
             f"{interrupted}.0a1b2c3d.part": "removed: a download cut short, nobody holds the job",
             f"{waiting}.jpg": "kept: its job is not over",
             "4.jpg": "kept: an operator's exported file",
             "999999.jpg": "kept: no such job",
             "2024-report.pdf": "kept: not a name the daemon writes"}
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    workers = make_pool(pool, staging_dir=tmp_path)
    assert await workers.remove_orphaned_files(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, why in names.items() if why.startswith("kept"))


def test_retry_policy_as_data():
    policy = RetryPolicy(max_attempts=4, backoff_base=10, backoff_cap=25, jitter=0.0, permanent=(MediaError,))
    assert policy.decide(OSError(), 0).action == "retry" and policy.decide(OSError(), 0).delay == 10
    assert policy.decide(OSError(), 1).delay == 20
    assert policy.decide(OSError(), 2).delay == 25               # capped
    assert policy.decide(OSError(), 3).action == "fail"          # the 4th failure
    assert policy.decide(MediaError("x"), 0).action == "fail"
    assert policy.decide(JobSkipped("big"), 0).action == "skip"
    wait = policy.decide(RetryLater(120), 3)
    assert wait.action == "defer" and not wait.counted and wait.delay >= 120
    standard = RetryPolicy.standard()
    from telethon.errors import FloodWaitError
    flood = standard.decide(FloodWaitError(request=None, capture=50), 0)
    assert flood.action == "defer" and 50 <= flood.delay <= 61
    assert standard.decide(MediaError("x"), 0).action == "fail"
    from telethon.errors import FloodPremiumWaitError
    premium = standard.decide(FloodPremiumWaitError(request=None, capture=900), 0)
    assert premium.action == "defer" and not premium.counted and premium.pause_account and premium.delay >= 900
    outage = standard.decide(ConnectionError("offline"), 4)
    assert outage.action == "defer" and not outage.counted     # however many attempts failed before
    from analysis_pool import AnalysisCrashed, AnalysisTimeout
    assert standard.decide(AnalysisCrashed("x"), 0).action == "retry"       # once may be bad luck
    crashed_twice = standard.decide(AnalysisCrashed("x"), 1)
    assert crashed_twice.action == "fail" and crashed_twice.bad_media     # twice: the file is poison
    assert standard.decide(AnalysisTimeout("x"), 1).bad_media


def test_job_kinds():
    base = dict(id=1, source_chat_id=1, source_message_id=1, account_id=None, origin="telegram",
                media_key="k", mime_type=None, file_size=None, message_date=None, status="staged",
                attempts=0, claims=0, staged_path=None, staged_owned=True)
    assert [Job(media_type=t, **base).kind for t in ("photo", "image", "video", "round", "gif")] == [
        "photo", "photo", "video", "video", "video"]


async def test_the_one_stop_block_wakes_and_stops_a_loop_at_once():
    from stoppable import Stoppable

    class Loop(Stoppable):
        def __init__(self):
            super().__init__()
            self.rounds = 0

        async def run(self):
            while not self.stopping:
                self.rounds += 1
                await self.pause(60)

    loop = Loop()
    task = asyncio.create_task(loop.run())
    await asyncio.sleep(0.05)
    loop.wake()                                       # work arrived: a round now, not in 60 s
    await asyncio.sleep(0.05)
    assert loop.rounds == 2
    loop.stop()
    async with asyncio.timeout(1):
        await task
    assert loop.rounds == 2 and await loop.until_stopped(60)
