"""The workers of one process: they empty the job queue (job_queue.py).

- **Bounded**: `WorkerPool` runs at most `analysis_slots` analyses and `download_slots` downloads
  at a time, and pauses downloads while many jobs wait for analysis (the staging area is disk).
  Downloads are claimed only for accounts whose clients are connected now.
- **One transaction**: a job's faces, persons, outbox rows (written by `IdentityMatcher.assign`),
  its media item's status and the job's own status commit together, or not at all. If
  PostgreSQL rolls it back to break a deadlock with another worker, it runs again at once.
- **Once per media**: a job whose media item is already analysed finishes as done without
  analysis (its posts exist per (person, media item) already); a job waits while a twin with
  the same media is being downloaded or analysed.
- **Retries** follow a `RetryPolicy` (retry_policy.py). Every failure is a `processing_errors`
  row with the job id and its context.
- **Graceful stop**: `stop()` ends claiming; running jobs get `grace` seconds to finish, then are
  cancelled and handed back (that write is shielded from the cancellation).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import psycopg

from database import queries
from job_queue import (CONFLICT, DB_UNAVAILABLE, Job, JobQueue, LeaseLost, describe_error, fetch_one,
                       first_line, media_item_params, record_error)
from media_decode import MediaError, preview_jpeg, read_head, sniff_kind
from queue_metrics import QueueStats, report_metrics
from retry_policy import JobSkipped, PermanentJobError, RetryPolicy
from staging_cleanup import remove_orphaned_files
from stoppable import Stoppable

logger = logging.getLogger(__name__)

STORE_ATTEMPTS = 5


class Analyser(Protocol):
    async def analyse(self, path: str | Path, kind: Literal["photo", "video"]) -> list[Any]: ...


class Matcher(Protocol):
    async def assign(self, conn: psycopg.AsyncConnection, media_item_id: int, faces: list[Any], *,
                     job_id: int | None = None) -> Any: ...


class Downloader(Protocol):
    async def download(self, job: Job) -> Path:
        """Fetch the job's media into the staging area; return the file's path."""



@dataclass
class WorkerConfig:
    analysis_slots: int = 2           # jobs analysed at once (the analyser bounds its processes)
    download_slots: int = 2
    max_staged: int = 16              # downloads pause while this many jobs wait for analysis
    poll_interval: float = 2.0        # seconds between claims when the queue looked empty
    grace: float = 20.0               # seconds running jobs get to finish when stopping
    metrics_interval: float = 60.0
    max_media_bytes: int | None = None
    download_timeout: float | None = 1800.0   # a download hanging longer is a failed attempt
    staging_dir: Path | None = None   # orphaned staged files here are removed at start


class WorkerPool(Stoppable):
    """The workers of one process: downloads (if it holds accounts) and analyses (if it has an
    analyser), bounded, leased, heartbeated, stopped gracefully. See the module docstring."""

    def __init__(self, queue: JobQueue, *, config: WorkerConfig, policy: RetryPolicy,
                 analyser: Analyser | None = None, matcher: Matcher | None = None,
                 downloader: Downloader | None = None, account_ids: Callable[[], list[int]] | None = None,
                 account_online: Callable[[int], bool] | None = None):
        """`account_ids()`: the accounts whose downloads this process can do (the clients it holds);
        `account_online(id)`: whether that account's client is connected now. The downloads of an
        account that is offline are not claimed: they wait, untouched, for the connection."""
        if analyser is not None and matcher is None:
            raise ValueError("an analyser needs a matcher to store what it finds")
        self.queue = queue
        self.config = config
        self.policy = policy
        self.analyser = analyser
        self.matcher = matcher
        self.downloader = downloader
        self.account_ids = account_ids or (lambda: [])
        self.account_online = account_online or (lambda account_id: True)
        super().__init__()
        self.stats = QueueStats()
        self._running: dict[int, asyncio.Task] = {}
        self._stage_wake = {"analyse": asyncio.Event(), "download": asyncio.Event()}
        self._busy = {"analyse": 0, "download": 0}

    def stop(self) -> None:
        """Stop claiming; `run()` returns once running jobs are finished or handed back."""
        super().stop()
        for event in self._stage_wake.values():
            event.set()

    async def run(self) -> None:
        """Work until `stop()`; then drain (finish or hand back running jobs) and report metrics."""
        if self.config.staging_dir is not None:
            try:
                await self.remove_orphaned_files(self.config.staging_dir)
            except DB_UNAVAILABLE as exc:
                logger.warning("could not look for leftover staged files (%s); next start", first_line(exc))
        try:
            async with asyncio.TaskGroup() as tg:
                heartbeat = tg.create_task(self._heartbeat_loop(), name="queue-heartbeat")
                tg.create_task(self._metrics_loop(), name="queue-metrics")
                claimers = []
                if self.analyser is not None:
                    claimers.append(tg.create_task(self._claim_loop("analyse"), name="queue-analyse"))
                if self.downloader is not None:
                    claimers.append(tg.create_task(self._claim_loop("download"), name="queue-download"))
                await asyncio.gather(*claimers)
                await self._drain()
                heartbeat.cancel()  # nothing runs any more
        finally:
            self.stop()
            if self._running:  # run() itself was cancelled or a loop failed: hand the jobs back
                await asyncio.shield(self._abandon(list(self._running.values())))
            await asyncio.shield(report_metrics(self.queue.pool, self.stats))

    # --- claiming ----------------------------------------------------------------------------

    async def _claim_loop(self, stage: Literal["analyse", "download"]) -> None:
        slots = self.config.analysis_slots if stage == "analyse" else self.config.download_slots
        wake = self._stage_wake[stage]
        failures = 0
        while not self.stopping:
            wake.clear()
            free = slots - self._busy[stage]
            if free <= 0:
                await wake.wait()
                continue
            try:
                jobs = await self._claim(stage, free)
                failures = 0
            except DB_UNAVAILABLE as exc:
                failures += 1
                delay = min(30.0, 2.0 ** failures)
                logger.warning("cannot claim jobs: the database is unavailable (%s); trying again in "
                               "%.0f s", first_line(exc), delay)
                await self._sleep(wake, delay)
                continue
            for job in jobs:
                self._start(stage, job)
            if not jobs:
                await self._sleep(wake, self.config.poll_interval)

    async def _claim(self, stage: str, free: int) -> list[Job]:
        if stage == "analyse":
            return await self.queue.claim_staged(free)
        accounts = [a for a in self.account_ids() if self.account_online(a)]
        if not accounts or await self.queue.staged_backlog() >= self.config.max_staged:
            return []
        return await self.queue.claim_downloads(free, accounts)

    async def _sleep(self, wake: asyncio.Event, seconds: float) -> None:
        try:
            await asyncio.wait_for(wake.wait(), seconds)
        except TimeoutError:
            pass

    def _start(self, stage: str, job: Job) -> None:
        self._busy[stage] += 1
        task = asyncio.create_task(self._run_job(stage, job), name=f"{stage}-job-{job.id}")
        self._running[job.id] = task

        def done(_: asyncio.Task) -> None:
            self._busy[stage] -= 1
            self._running.pop(job.id, None)
            self._stage_wake[stage].set()
            if stage == "download":
                self._stage_wake["analyse"].set()

        task.add_done_callback(done)

    # --- one job -----------------------------------------------------------------------------

    async def _run_job(self, stage: str, job: Job) -> None:
        """The boundary of one job: every outcome is settled here; nothing escapes to the loops."""
        started = time.monotonic()
        try:
            if job.claims > self.policy.max_claims:
                raise PermanentJobError(
                    f"claimed {job.claims} times without finishing: the process working on it "
                    f"stopped each time (crash, out of memory?)")
            if stage == "analyse":
                outcome = await self._analyse(job)
            else:
                outcome = await self._download(job)
            logger.info("%s: %s in %.2f s", job, outcome, time.monotonic() - started)
        except asyncio.CancelledError:
            raise
        except LeaseLost:
            logger.warning("%s was taken over by another process (its lease ran out: was the "
                           "database unreachable?); leaving it to that process", job)
        except CONFLICT as exc:  # conflicted STORE_ATTEMPTS times in a row: an ordinary retry
            await asyncio.shield(self._settle_failure(stage, job, exc, time.monotonic() - started))
        except DB_UNAVAILABLE as exc:
            logger.warning("%s: the database is unavailable (%s); the job comes back when its "
                           "lease runs out", job, first_line(exc))
        except Exception as exc:
            await asyncio.shield(self._settle_failure(stage, job, exc, time.monotonic() - started))

    async def _download(self, job: Job) -> str:
        item = await self.queue.media_item(job.media_key)
        if item is not None and item[1] == "analysed":
            await self.queue.finish(job, media_item_id=item[0], note="same media analysed before")
            self.stats.jobs_deduplicated += 1
            self.stats.jobs_done += 1
            return "done without downloading: the same media was analysed before"
        limit = self.config.max_media_bytes
        if limit is not None and job.file_size is not None and job.file_size > limit:
            raise JobSkipped(f"{job.file_size / 2**20:.0f} MB is more than MAX_MEDIA_SIZE_MB")
        try:
            path = await asyncio.wait_for(self.downloader.download(job), self.config.download_timeout)
        except TimeoutError as exc:
            raise TimeoutError(f"downloading took more than {self.config.download_timeout:.0f} s "
                               f"({first_line(exc) if str(exc) else 'no answer'})") from exc
        await asyncio.shield(self.queue.mark_staged(job, path))
        self.stats.media_downloaded += 1
        return f"downloaded to {path}"

    async def _analyse(self, job: Job) -> str:
        item = await self.queue.media_item(job.media_key)
        if item is not None and item[1] == "failed":
            raise PermanentJobError(f"the same media ({job.media_key}) could not be read in an earlier job")
        if item is not None and item[1] == "analysed":
            await self.queue.finish(job, media_item_id=item[0], note="same media analysed before")
            self._remove_staged(job)
            self.stats.jobs_deduplicated += 1
            self.stats.jobs_done += 1
            return "done: the same media was analysed before"
        if not job.staged_path:
            raise PermanentJobError("staged without a file: nothing to analyse")
        if not await asyncio.to_thread(os.path.exists, job.staged_path):
            return await self._staged_file_missing(job)
        t0 = time.monotonic()
        faces = await self.analyser.analyse(job.staged_path, job.kind)
        self.stats.analysis_ms += int((time.monotonic() - t0) * 1000)
        preview = await self._preview(job) if faces else None
        # Once the faces are found, storing them is not interrupted by a shutdown: the work is done.
        summary = await asyncio.shield(self._store(job, faces, preview))
        self._remove_staged(job)
        return summary

    async def _preview(self, job: Job) -> bytes | None:
        """A small copy of the photo, kept with its faces (the file is removed once analysed): the
        dashboard shows a face's whole photo from it. None for a video, or a photo that cannot be
        read again: the faces are found, and a missing preview costs only the picture."""
        try:
            kind = sniff_kind(await asyncio.to_thread(read_head, job.staged_path)) or job.kind
            if kind != "photo":
                return None
            return await asyncio.to_thread(preview_jpeg, job.staged_path)
        except (MediaError, OSError) as exc:
            logger.warning("%s: no preview of the photo is kept (%s); its faces are stored all the same",
                           job, first_line(exc))
            return None

    async def _staged_file_missing(self, job: Job) -> str:
        if not job.staged_owned or job.account_id is None:
            raise PermanentJobError(f"the file {job.staged_path} is gone (moved or deleted since it was imported)")
        logger.warning("%s: its downloaded file %s is not here; if this worker runs on another machine, "
                       "mount the staging area there (STAGING_DIR) — the job goes back to be downloaded",
                       job, job.staged_path)
        await self.queue.requeue_download(job)
        return "sent back to be downloaded again (its file was missing)"

    async def _store(self, job: Job, faces: list[Any], preview: bytes | None = None) -> str:
        """`_store_once`, run again at once if PostgreSQL broke a deadlock with another worker by
        rolling it back (nothing of it was written), rather than waiting out the job's lease."""
        for attempt in range(1, STORE_ATTEMPTS):
            try:
                return await self._store_once(job, faces, preview)
            except CONFLICT as exc:
                logger.info("%s: storing conflicted with another worker (%s); again, attempt %d",
                            job, first_line(exc), attempt + 1)
                await asyncio.sleep(random.uniform(0.01, 0.1) * attempt)
        return await self._store_once(job, faces, preview)   # the last attempt: a conflict is raised

    async def _store_once(self, job: Job, faces: list[Any], preview: bytes | None = None) -> str:
        """The job's faces, persons, outbox rows, photo preview and status, in one transaction."""
        async with self.queue.pool.connection() as conn, conn.transaction():
            if not await fetch_one(conn, queries.queue_lock_own_job, {"job_id": job.id, "owner": self.queue.owner}):
                raise LeaseLost(str(job))
            await conn.execute(queries.queue_ensure_media_item, media_item_params(job))
            item_id, status = await fetch_one(conn, queries.queue_lock_media_item, {"media_key": job.media_key})
            if status == "analysed":  # a twin finished while this one was being analysed
                await self.queue.finish(job, media_item_id=item_id, note="same media analysed before", conn=conn)
                self.stats.jobs_deduplicated += 1
                self.stats.jobs_done += 1
                return "done: a job with the same media finished first"
            result = await self.matcher.assign(conn, item_id, faces, job_id=job.id)
            if preview is not None:
                await conn.execute(queries.queue_store_preview, {"media_item_id": item_id, "preview_jpeg": preview})
            await conn.execute(queries.queue_mark_media_analysed,
                               {"media_item_id": item_id, "face_count": len(faces)})
            await self.queue.finish(job, media_item_id=item_id, conn=conn)
        created = len(result.created_persons)
        self.stats.jobs_done += 1
        self.stats.faces_found += len(faces)
        self.stats.persons_created += created
        return f"done: {len(faces)} face(s)" + (f", {created} new person(s)" if created else "")

    async def _settle_failure(self, stage: str, job: Job, exc: Exception, took: float) -> None:
        decision = self.policy.decide(exc, job.attempts)
        context = {"stage": stage, "source_chat_id": job.source_chat_id,
                   "source_message_id": job.source_message_id, "media_key": job.media_key,
                   "media_type": job.media_type, "origin": job.origin, "account_id": job.account_id,
                   "attempt": job.attempts + (1 if decision.counted else 0),
                   "staged_path": job.staged_path, "seconds": round(took, 2)}
        try:
            if decision.action == "skip":
                await self.queue.finish(job, status="skipped", note=str(exc))
                self.stats.jobs_skipped += 1
                self._remove_staged(job)
                logger.info("%s: skipped: %s", job, exc)
            elif decision.action == "defer":
                await self.queue.retry(job, delay=decision.delay, error=describe_error(exc), counted=False)
                if stage == "download" and job.account_id is not None and decision.pause_account:
                    await self.queue.pause_account(job.account_id, decision.delay)
                logger.info("%s: waits %.0f s (%s); not counted as an attempt", job, decision.delay,
                            describe_error(exc))
            elif decision.action == "retry":
                await self.queue.retry(job, delay=decision.delay, error=describe_error(exc), counted=True)
                async with self.queue.pool.connection() as conn:
                    await record_error(conn, exc, job_id=job.id, context=context | {"will_retry": True})
                self.stats.jobs_retried += 1
                logger.warning("%s: attempt %d of %d failed (%s); trying again in %.0f s", job,
                               job.attempts + 1, self.policy.poison_attempts if isinstance(exc, self.policy.poison)
                               else self.policy.max_attempts, describe_error(exc),
                               decision.delay, exc_info=None if isinstance(exc, OSError) else exc)
            else:
                permanent = self.policy.is_permanent(exc)
                bad_media = stage == "analyse" and (decision.bad_media or (
                    permanent and not isinstance(exc, PermanentJobError)))
                await self.queue.fail(job, exc, counted=not permanent,
                                      context=context | {"will_retry": False, "poison": decision.bad_media},
                                      bad_media=bad_media)
                self.stats.jobs_failed += 1
                self._remove_staged(job)
                logger.error("%s failed for good: %s%s (the error is on the dashboard's error list)",
                             job, describe_error(exc),
                             "; the file crashed or hung its analysis process each time: it is not "
                             "analysed again" if decision.bad_media else "",
                             exc_info=None if permanent or decision.bad_media else exc)
        except LeaseLost:
            logger.warning("%s failed (%s) but another process has taken it over", job, describe_error(exc))
        except DB_UNAVAILABLE as db_exc:
            logger.warning("%s failed (%s) and the database is unavailable to record it (%s); the job "
                           "comes back when its lease runs out", job, describe_error(exc), first_line(db_exc))

    def _remove_staged(self, job: Job) -> None:
        if job.staged_owned and job.staged_path:
            try:
                Path(job.staged_path).unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("could not remove the staged file %s of %s: %s", job.staged_path, job, exc)

    # --- stopping, heartbeat, metrics --------------------------------------------------------

    async def _drain(self) -> None:
        """Let running jobs finish for `grace` seconds; cancel the rest and hand them back."""
        running = list(self._running.values())
        if not running:
            return
        logger.info("waiting up to %.0f s for %d running job(s) to finish", self.config.grace, len(running))
        _, pending = await asyncio.wait(running, timeout=self.config.grace)
        if not pending:
            return
        await self._abandon(pending)

    async def _abandon(self, tasks: Collection[asyncio.Task]) -> None:
        """Cancel running jobs and hand them back to the queue."""
        ids = [job_id for job_id, task in self._running.items() if task in tasks]
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        try:
            released = await asyncio.shield(self.queue.release(ids))
            logger.info("handed back %d unfinished job(s) for the next start: %s", len(released), released)
        except DB_UNAVAILABLE as exc:
            logger.warning("could not hand back jobs %s (%s); they come back when their lease runs out",
                           ids, first_line(exc))

    async def _heartbeat_loop(self) -> None:
        interval = max(0.1, self.queue.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            ids = list(self._running)
            if not ids:
                continue
            try:
                held = await self.queue.heartbeat(ids)
            except DB_UNAVAILABLE as exc:
                logger.warning("cannot extend the leases of running jobs (%s)", first_line(exc))
                continue
            lost = sorted(i for i in ids if i in self._running and i not in held)
            if lost:
                logger.warning("lost the lease of job(s) %s: another process may take them over", lost)

    async def _metrics_loop(self) -> None:
        while not await self.until_stopped(self.config.metrics_interval):
            await report_metrics(self.queue.pool, self.stats)

    async def remove_orphaned_files(self, staging_dir: Path) -> int:
        """Remove this daemon's leftover files in the staging area (staging_cleanup.py)."""
        return await remove_orphaned_files(self.queue.pool, staging_dir)
