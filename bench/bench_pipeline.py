"""Benchmark: a Telegram Desktop export imported end to end, against the bare model; prints figures.

Three figures, each with `--workers` processes busy (one per core), on the same N photos:

1. bare model: plain decode + dlib HOG detect + landmarks + embeddings (bench_faces.py's
   `bare_photo`, what a minimal script would do), in a process pool;
2. FaceProcessor.detect in a process pool, with the daemon's MIN_QUALITY_THRESHOLD: our face
   pipeline alone (CNN check of unsure faces, quality, crops), without queue or database;
3. the import: jobs in PostgreSQL, claimed and leased, analysed by the daemon's `AnalysisPool`,
   faces matched to persons and stored, due posts written, every job in its own transaction —
   photos per second from the first claim to the last commit (and the whole command, with
   reading and hashing the export, on its own line).

The photos are the labelled fixtures (tests/faces or $FACES_DIR) cycled to N, each copy
slightly cropped and re-encoded, so no two are the same file or the same face vector (as in a
real archive: otherwise deduplication would make the import look faster than it is).

    .venv/bin/python bench/bench_pipeline.py [--photos 48] [--workers 2] [--rounds 1]

With several rounds it prints the median of the per-round ratios and their range.

Last measured (2026-11-29, 2 cores, dlib), twice `flock -x /tmp/cpu.lock .venv/bin/python
bench/bench_pipeline.py --photos 24 --workers 2 --rounds 8` (phases in alternating order):
  import / bare model:    median 0.90x (0.78 to 1.03), then 0.91x (0.82 to 1.02);
                          mean import rate over mean bare rate 0.89x, then 0.91x
  import / FaceProcessor: median 0.95x (0.87 to 1.14), then 0.93x (0.78 to 1.12)
  bare 1.89-2.76 photos/s, FaceProcessor (MIN_QUALITY_THRESHOLD 0.5) 2.04-2.74, import 1.96-2.67;
  analysis processes 95-96% busy during the import; per 24 photos the daemon process used
  0.3-0.4 s of CPU and PostgreSQL 0.2 s, against 22-23 s of analysis.
So the queue and database cost ~5% (the analysis processes' idle share), the face pipeline
~5% more than the bare calls (it finds more faces: 70 against 62 on these photos, and checks
unsure ones with the CNN, ~8% of its CPU, while it skips embedding low-quality faces), and the
import sits at issue 6's goal of 0.9x, not comfortably above it. Earlier runs with the phases
always in the same order (bare, FaceProcessor, import; 48 photos) gave 0.75-0.89x over five
rounds: the machine's speed drifts by up to 25% between identical runs, and a fixed order lets
the drift favour one phase, hence the alternation. (One of those runs lost a round to a
deadlock between two jobs' transactions that the queue took for an outage; fixed since.)

On a shared machine other processes take CPU at random: `--rounds N` measures the three figures
N times, in reverse order every other round, prints each round (a disturbed one shows as such)
and then the median ratio with its range.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import statistics
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


def pool_rate(function, photos: list[Path], workers: int, min_quality: float = 0.0) -> float:
    processor = FaceProcessor("dlib", min_quality=min_quality)
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

    base = Path(tempfile.mkdtemp(prefix="fa-bench-"))
    os.chmod(base, 0o755)
    export = base / "export"
    photos = make_photos(export, args.photos)
    write_result_json(export, photos)
    print(f"{args.photos} photos ({len({p.stat().st_size for p in photos})} distinct sizes), "
          f"{args.workers} worker processes, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

    server = database.embedded_server(base / "pg", cleanup_mode="delete")
    try:
        import psycopg
        import psycopg.sql
        admin = server.get_uri("postgres")
        settings = config.load_settings(None, face_engine="dlib", num_workers=args.workers, data_dir=base / "data")
        ratios: dict[str, list[float]] = {"bare": [], "ours": []}

        def bare_phase() -> float:
            rate = pool_rate(bare_photo, photos, args.workers)
            print(f"bare dlib calls (decode, HOG, landmarks, embed)  {rate:6.2f} photos/s")
            return rate

        def ours_phase() -> float:
            rate = pool_rate(pipeline_photo, photos, args.workers, settings.min_quality_threshold)
            print(f"FaceProcessor.detect (MIN_QUALITY_THRESHOLD)     {rate:6.2f} photos/s")
            return rate

        def import_phase(round_: int) -> float:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(f"bench{round_}")))
            conninfo = psycopg.conninfo.make_conninfo(admin, dbname=f"bench{round_}")
            database.migrate(conninfo)
            database.ensure_engine(conninfo, "dlib", 128)
            rate, whole, summary, cpu = asyncio.run(import_rate(settings, conninfo, export, server))
            print(f"import, queue to last commit                     {rate:6.2f} photos/s")
            wall = args.photos / rate
            print(f"  CPU during it: analysis processes {cpu['analysis']:.1f} s "
                  f"({cpu['analysis'] / (wall * args.workers):.0%} of {args.workers} x {wall:.1f} s), "
                  f"daemon process {cpu['daemon']:.1f} s, PostgreSQL {cpu['postgres']:.1f} s")
            print(f"import, whole (reading + hashing + analysis)     {args.photos / whole:6.2f} photos/s "
                  f"({whole:.1f} s)")
            print(f"result: {summary['persons']} persons, {summary['faces']} faces, "
                  f"{summary['pending_faces']} pending, {summary['pending_posts']} posts due")
            return rate

        for round_ in range(1, args.rounds + 1):
            print(f"-- round {round_}, load average {os.getloadavg()[0]:.1f}")
            # The machine's speed drifts: every other round runs the phases in reverse order, so
            # that a drift does not always favour the same phase.
            if round_ % 2:
                bare, ours, rate = bare_phase(), ours_phase(), import_phase(round_)
            else:
                rate = import_phase(round_)
                ours = ours_phase()
                bare = bare_phase()
            ratios["bare"].append(rate / bare)
            ratios["ours"].append(rate / ours)
            print(f"round {round_}: import {rate / bare:.2f}x bare model, {rate / ours:.2f}x FaceProcessor")
        if args.rounds > 1:
            for name, label in (("bare", "bare model"), ("ours", "FaceProcessor")):
                values = sorted(ratios[name])
                print(f"import / {label}: median {statistics.median(values):.2f}x "
                      f"(from {values[0]:.2f} to {values[-1]:.2f} over {len(values)} rounds)")
    finally:
        server.cleanup()
    print(f"load average now {os.getloadavg()[0]:.1f}")

if __name__ == "__main__":
    main_bench()
