"""The analysis processes: the real dlib engine off the event loop, and what happens when a file
takes too long, a shutdown cancels it, or the analysis process dies."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from analysis_pool import AnalysisCrashed, AnalysisPool, AnalysisTimeout
from media_processor import FaceProcessor, MediaError


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child stays a zombie until reaped: look at its state
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


async def wait_dead(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if not alive(pid):
                return True
        except FileNotFoundError:
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.fixture
async def analysis():
    pool = AnalysisPool(FaceProcessor("dlib"), workers=1)
    await pool.start()
    yield pool
    pool.close()


async def test_faces_are_found_in_a_worker_process_and_bad_media_is_reported(analysis, faces_dir, tmp_path):
    faces = await analysis.analyse(faces_dir / "barack_obama_01.jpg", "photo")
    assert len(faces) == 1 and faces[0].embedding.shape == (128,)
    assert await analysis.analyse(faces_dir / "noface_cat.png", "photo") == []
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((faces_dir / "barack_obama_01.jpg").read_bytes()[:3000])
    with pytest.raises(MediaError):
        await analysis.analyse(broken, "photo")
    (pid,) = [s.pid for s in analysis._slots]
    assert pid != os.getpid() and alive(pid)          # the same process goes on after a bad file


async def test_a_file_that_takes_too_long_ends_its_process_and_the_next_one_works(faces_dir):
    pool = AnalysisPool(FaceProcessor("dlib"), workers=1, timeout=0.05)
    await pool.start()
    try:
        (pid,) = [s.pid for s in pool._slots]
        with pytest.raises(AnalysisTimeout):
            await pool.analyse(faces_dir / "group_situation_room_2011.jpg", "photo")
        assert await wait_dead(pid)
        pool.timeout = 60
        assert len(await pool.analyse(faces_dir / "joe_biden_01.jpg", "photo")) == 1
    finally:
        pool.close()


async def test_cancelling_an_analysis_stops_its_process(analysis, faces_dir):
    (pid,) = [s.pid for s in analysis._slots]
    task = asyncio.create_task(analysis.analyse(faces_dir / "group_situation_room_2011.jpg", "photo"))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_dead(pid)


async def test_a_dead_analysis_process_is_an_error_for_that_file_only(analysis, faces_dir):
    (pid,) = [s.pid for s in analysis._slots]
    task = asyncio.create_task(analysis.analyse(faces_dir / "group_situation_room_2011.jpg", "photo"))
    await asyncio.sleep(0.3)
    os.kill(pid, signal.SIGKILL)                      # e.g. the kernel's OOM killer
    with pytest.raises(AnalysisCrashed):
        await task
    assert len(await analysis.analyse(faces_dir / "joe_biden_01.jpg", "photo")) == 1


# --- hostile files through the whole queue ----------------------------------------------------


async def test_a_file_that_crashes_or_hangs_its_process_costs_that_job_only(pool, dlib_db, faces_dir, tmp_path):
    """A file that really aborts its worker process (SIGABRT, as a native decoder crash does) and
    one that hangs it for ever: each is tried twice, in a fresh process each time, then failed as
    poison with its errors recorded and its media marked unreadable; the photos around them are
    analysed, the daemon (this process) goes on, the model loads once per worker process."""
    import psycopg

    from hostile_engine import HostileProcessor, loads
    from identity_matcher import IdentityMatcher, MatchParams
    from processing_queue import RetryPolicy
    from test_queue import add_job, errors, job_row, make_pool, run_until

    photos = {}
    for name in ("barack_obama_01.jpg", "joe_biden_01.jpg", "barack_obama_02.jpg"):
        photos[name] = tmp_path / name
        photos[name].write_bytes((faces_dir / name).read_bytes())
    (tmp_path / "poison.mp4").write_bytes(b"ABORT" + os.urandom(64))
    (tmp_path / "stuck.mp4").write_bytes(b"HANG" + os.urandom(64))
    jobs = {name: add_job(dlib_db, i, staged_path=str(path), staged_owned=False, media_key=f"sha256:{name}")
            for i, (name, path) in enumerate([*photos.items(), ("poison.mp4", tmp_path / "poison.mp4"),
                                              ("stuck.mp4", tmp_path / "stuck.mp4")])}
    load_log = tmp_path / "loads"
    analysis = AnalysisPool(HostileProcessor(load_log), workers=2, timeout=3.0)
    await analysis.start()
    try:
        policy = RetryPolicy.standard(backoff_base=0.2, backoff_cap=0.5, jitter=0.0)
        workers = make_pool(pool, analyser=analysis, matcher=IdentityMatcher(MatchParams.for_engine("dlib")),
                            policy=policy)
        await run_until(workers, dlib_db, list(jobs.values()), timeout=90)
        # the ended processes were replaced: the pool analyses on, in live processes
        assert len(await analysis.analyse(photos["joe_biden_01.jpg"], "photo")) == 1
        assert analysis.pids() and all(alive(pid) for pid in analysis.pids())
    finally:
        analysis.close()

    rows = {name: job_row(dlib_db, job_id) for name, job_id in jobs.items()}
    assert {name: r["status"] for name, r in rows.items()} == {
        "barack_obama_01.jpg": "done", "joe_biden_01.jpg": "done", "barack_obama_02.jpg": "done",
        "poison.mp4": "failed", "stuck.mp4": "failed"}
    assert rows["poison.mp4"]["attempts"] == 2 and rows["stuck.mp4"]["attempts"] == 2
    recorded = [(e["job_id"], e["error_type"], e["error_context"]["will_retry"]) for e in errors(dlib_db)]
    assert sorted(recorded) == sorted([
        (jobs["poison.mp4"], "AnalysisCrashed", True), (jobs["poison.mp4"], "AnalysisCrashed", False),
        (jobs["stuck.mp4"], "AnalysisTimeout", True), (jobs["stuck.mp4"], "AnalysisTimeout", False)])
    with psycopg.connect(dlib_db) as conn:
        media = dict(conn.execute("SELECT media_key, status FROM media_items").fetchall())
        faces = conn.execute("SELECT count(*) FROM face_embeddings").fetchone()[0]
    assert media["sha256:poison.mp4"] == media["sha256:stuck.mp4"] == "failed"   # its copies: not again
    assert faces == 3
    pids = loads(load_log)
    assert len(pids) == len(set(pids))                 # one model load per worker process
    assert 2 < len(pids) <= 2 + 4                     # the two first, and one per process ended
