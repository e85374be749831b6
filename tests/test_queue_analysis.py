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
