"""Benchmark: a Telegram Desktop export imported end to end, against the bare model; prints figures.

Three figures, each with `--workers` processes busy (one per core), on the same N photos:

1. bare model: plain decode + dlib HOG detect + landmarks + embeddings (bench_faces.py's
   `bare_photo`, what a minimal script would do), in a process pool;
2. FaceProcessor.detect in a process pool: our face pipeline alone (CNN check of unsure faces,
   quality, crops), without queue or database;
3. the import: jobs in PostgreSQL, claimed and leased, analysed by the daemon's `AnalysisPool`,
   faces matched to persons and stored, due posts written, every job in its own transaction —
   photos per second from the first claim to the last commit (and the whole command, with
   reading and hashing the export, on its own line).

The photos are the labelled fixtures (../shared/faces or $FACES_DIR) cycled to N, each copy
slightly cropped and re-encoded, so no two are the same file or the same face vector (as in a
real archive: otherwise deduplication would make the import look faster than it is).

    .venv/bin/python bench/bench_pipeline.py [--photos 48] [--workers 2] [--rounds 1]

Last measured (2026-11-29, 2 cores, dlib, `flock -x /tmp/cpu.lock .venv/bin/python
bench/bench_pipeline.py --photos 48 --workers 2 --rounds 2`):
  round 1: bare 2.12 photos/s, FaceProcessor.detect 2.24, import 1.60 (0.75x bare, 0.71x FaceProcessor),
           analysis processes busy 89%;
  round 2: bare 2.56, FaceProcessor.detect 2.31, import 2.02 (0.79x bare, 0.88x FaceProcessor),
           analysis processes busy 96%; the daemon process and PostgreSQL used 0.7 s and 0.4 s
           of CPU against 46 s of analysis.
A later run with --rounds 3: bare 2.20 / 2.65 / 2.39, FaceProcessor 2.20 / 2.09 / 2.09, import
1.97 / 2.02 / 2.11 photos/s (0.89x / 0.76x / 0.88x bare, 0.90x / 0.97x / 1.01x FaceProcessor),
analysis processes 95-96% busy. The analysis pool alone (no queue, 4 photos in flight on 2
processes) measured next to the import in turns: 2.08 / 2.04 photos/s against 2.13 / 1.79 for
the import. So the queue and the database cost about 5% (the idle share of the analysis
processes), the face pipeline costs what the bare calls cost (its CNN check of unsure faces,
~8% of its CPU, is paid back by not embedding low-quality faces), and the bare figure moves by
20% from round to round on this machine. Over the five rounds the import is 0.75-0.89x bare
(median 0.79x): issue 6's goal of 0.9x is not shown. (An earlier run lost its round 2
to a deadlock between two jobs' transactions that the queue took for an outage; fixed since.)

On a shared machine other processes take CPU at random: `--rounds 2` measures the three figures
in turn twice and prints each round, so a round disturbed by someone else shows as such.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import config  # noqa: E402
import database  # noqa: E402
import exports  # noqa: E402
import main  # noqa: E402
from bench_faces import _start_worker, _warm, bare_photo, pipeline_photo  # noqa: E402
from media_fixtures import faces_dir  # noqa: E402
from media_processor import FaceProcessor  # noqa: E402
from processing_queue import JobQueue, RetryPolicy, WorkerPool  # noqa: E402


def make_photos(target: Path, n: int, seed: int = 1) -> list[Path]:
    """N distinct photos: the fixtures, each copy cropped by up to 6% and re-encoded."""
    from PIL import Image

    rng = random.Random(seed)
    sources = sorted(p for p in faces_dir().iterdir() if p.suffix.lower() in {".jpg", ".png"})
    (target / "photos").mkdir(parents=True)
    photos = []
    for i in range(n):
        with Image.open(sources[i % len(sources)]) as im:
            im = im.convert("RGB")
            w, h = im.size
            dx, dy = int(w * rng.uniform(0, 0.06)), int(h * rng.uniform(0, 0.06))
            im = im.crop((dx, dy, w - int(w * rng.uniform(0, 0.06)), h - int(h * rng.uniform(0, 0.06))))
            path = target / "photos" / f"photo_{i + 1}.jpg"
            im.save(path, quality=90)
            photos.append(path)
    return photos


def write_result_json(target: Path, photos: list[Path]) -> None:
    messages = [{"id": i + 1, "type": "message", "date": "2022-05-01T10:00:00",
                 "date_unixtime": str(1651399200 + i), "photo": f"photos/{p.name}", "text": ""}
                for i, p in enumerate(photos)]
    (target / "result.json").write_text(json.dumps(
        {"name": "bench", "type": "private_supergroup", "id": 42, "messages": messages}))


def pool_rate(function, photos: list[Path], workers: int) -> float:
    processor = FaceProcessor("dlib")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(processor, None)) as pool:
        list(pool.map(_warm, [1.0] * workers * 2))       # every worker has loaded its models
        start = time.perf_counter()
        list(pool.map(function, photos))
        return len(photos) / (time.perf_counter() - start)


class CpuMeter:
    """CPU seconds (user + system) used by groups of processes between `start()` and `stop()`."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]):
        self.groups = groups
        self.before: dict[str, dict[int, float]] = {}
        self.used: dict[str, float] = {}

    @staticmethod
    def _times(pids: list[int]) -> dict[int, float]:
        import psutil

        times = {}
        for pid in pids:
            try:
                t = psutil.Process(pid).cpu_times()
                times[pid] = t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return times

    def start(self) -> None:
        self.before = {name: self._times(pids()) for name, pids in self.groups.items()}

    def stop(self) -> None:
        for name, pids in self.groups.items():
            after = self._times(pids())
            self.used[name] = sum(t - self.before[name].get(pid, 0.0) for pid, t in after.items())


def postgres_pids(server) -> list[int]:
    import psutil

    postmaster = psutil.Process(server.get_pid())
    return [postmaster.pid] + [p.pid for p in postmaster.children(recursive=True)]


async def import_rate(settings: config.Settings, conninfo: str, export: Path,
                      server) -> tuple[float, float, dict, dict[str, float]]:
    """(photos/s of the analysis phase, seconds of the whole import, summary, CPU seconds used
    during the analysis phase by: the analysis processes, this process, PostgreSQL)."""
    analyser, matcher = await main.start_analysis(settings)     # processes up, models loaded
    pool = main.open_pool(conninfo, max_size=settings.num_workers + 4)
    await pool.open(wait=True)
    meter = CpuMeter({"analysis": lambda: [s.pid for s in analyser._slots if s.pid],
                      "daemon": lambda: [os.getpid()], "postgres": lambda: postgres_pids(server)})
    try:
        started = time.perf_counter()
        contents = exports.read_export(export)
        job_ids, _ = await exports.enqueue(pool, contents)
        queued = time.perf_counter()
        meter.start()
        workers = WorkerPool(JobQueue(pool), config=main.worker_config(settings, main.Tuning()),
                             policy=RetryPolicy.standard(), analyser=analyser, matcher=matcher)
        report = await exports.run_import(pool, contents, workers)
        finished = time.perf_counter()
        meter.stop()
    finally:
        analyser.close()
        await pool.close()
    assert report.statuses["done"] == len(job_ids), report.statuses
    return len(job_ids) / (finished - queued), finished - started, report.summary, meter.used


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=48)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()

    import pgserver

    base = Path(tempfile.mkdtemp(prefix="fa-bench-"))
    os.chmod(base, 0o755)
    export = base / "export"
    photos = make_photos(export, args.photos)
    write_result_json(export, photos)
    print(f"{args.photos} photos ({len({p.stat().st_size for p in photos})} distinct sizes), "
          f"{args.workers} worker processes, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

    server = pgserver.get_server(base / "pg", cleanup_mode="delete")
    try:
        import psycopg
        import psycopg.sql
        admin = server.get_uri("postgres")
        settings = config.load_settings(None, face_engine="dlib", num_workers=args.workers, data_dir=base / "data")
        for round_ in range(1, args.rounds + 1):
            print(f"-- round {round_}, load average {os.getloadavg()[0]:.1f}")
            bare = pool_rate(bare_photo, photos, args.workers)
            print(f"bare dlib calls (decode, HOG, landmarks, embed)  {bare:6.2f} photos/s")
            ours = pool_rate(pipeline_photo, photos, args.workers)
            print(f"FaceProcessor.detect                             {ours:6.2f} photos/s")
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(f"bench{round_}")))
            conninfo = psycopg.conninfo.make_conninfo(admin, dbname=f"bench{round_}")
            database.migrate(conninfo)
            database.ensure_engine(conninfo, "dlib", 128)
            rate, whole, summary, cpu = asyncio.run(import_rate(settings, conninfo, export, server))
            print(f"import, queue to last commit                     {rate:6.2f} photos/s "
                  f"({rate / bare:.2f}x bare model, {rate / ours:.2f}x FaceProcessor)")
            wall = args.photos / rate
            print(f"  CPU during it: analysis processes {cpu['analysis']:.1f} s "
                  f"({cpu['analysis'] / (wall * args.workers):.0%} of {args.workers} x {wall:.1f} s), "
                  f"daemon process {cpu['daemon']:.1f} s, PostgreSQL {cpu['postgres']:.1f} s")
            print(f"import, whole (reading + hashing + analysis)     {args.photos / whole:6.2f} photos/s "
                  f"({whole:.1f} s)")
            print(f"result: {summary['persons']} persons, {summary['faces']} faces, "
                  f"{summary['pending_faces']} pending, {summary['pending_posts']} posts due")
    finally:
        server.cleanup()
    print(f"load average now {os.getloadavg()[0]:.1f}")

if __name__ == "__main__":
    main_bench()
