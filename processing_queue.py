"""The job queue in PostgreSQL and the workers that empty it.

A job is one source message with media (`media_jobs`). Its life:

    queued ──download (the process holding its account's client)──► staged
    staged ──analyse (any worker, any machine)──► done | failed | skipped

- **Claiming**: `SELECT … FOR UPDATE SKIP LOCKED`, a lease (`lease_owner`, `lease_expires_at`)
  that a heartbeat extends while the job runs. A process that dies stops its heartbeat; its jobs
  are claimable again when their lease runs out. Every write that finishes a job checks that the
  writer still holds the lease, so a job is never finished twice.
- **One transaction**: a job's faces, persons, outbox rows (written by `IdentityMatcher.assign`),
  its media item's status and the job's own status commit together, or not at all. If
  PostgreSQL rolls it back to break a deadlock with another worker, it runs again at once.
- **Once per media**: a job whose media item is already analysed finishes as done without
  analysis (its posts exist per (person, media item) already); a job waits while a twin with
  the same media is being downloaded or analysed.
- **Retries** follow a `RetryPolicy` (data, not code): transient errors come back after an
  exponential backoff; permanent errors (bad media) fail the job at once; errors that carry a
  retry time (Telegram flood waits) reschedule it without counting an attempt. Every failure is
  a `processing_errors` row with the job id and its context.
- **Bounded**: `WorkerPool` runs at most `analysis_slots` analyses and `download_slots` downloads
  at a time, and pauses downloads while many jobs wait for analysis (the staging area is disk).
- **Graceful stop**: `stop()` ends claiming; running jobs get `grace` seconds to finish, then are
  cancelled and handed back (that write is shielded from the cancellation).
- **Metrics**: counters of each process go to `processing_metrics` every minute as deltas
  (`jobs_done`, `jobs_deduplicated`, `jobs_failed`, `jobs_retried`, `jobs_skipped`,
  `media_downloaded`, `faces_found`, `persons_created`, `analysis_ms`); the queue depth gauges
  (`queue_depth`, `queue_queued`, `queue_staged`) once a minute whatever the number of processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import re
import socket
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from database import queries

logger = logging.getLogger(__name__)

# The database went away (restart, network): wait and try again, never crash or fail jobs for it.
DB_UNAVAILABLE: tuple[type[BaseException], ...] = (psycopg.OperationalError, psycopg.InterfaceError)

# PostgreSQL rolled a transaction back to break a deadlock or a serialization conflict with
# another worker's (SQLSTATE class 40). OperationalErrors to psycopg, but not outages: the
# database is there and the same transaction, run again, normally succeeds at once.
CONFLICT: tuple[type[BaseException], ...] = (
    psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure, psycopg.errors.TransactionRollback)
STORE_ATTEMPTS = 5

FINAL_STATUSES = frozenset({"done", "failed", "skipped"})


# --- jobs and errors ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """A claimed row of media_jobs."""

    id: int
    source_chat_id: int
    source_message_id: int
    account_id: int | None
    origin: str
    media_key: str
    media_type: str
    mime_type: str | None
    file_size: int | None
    message_date: datetime | None
    status: str
    attempts: int
    claims: int
    staged_path: str | None
    staged_owned: bool
    media_item_id: int | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls) if f.name in row})

    @property
    def kind(self) -> Literal["photo", "video"]:
        """How the face processor reads it: videos, round video notes and GIFs are videos."""
        return "video" if self.media_type in ("video", "round", "gif") else "photo"

    def __str__(self) -> str:
        return f"job {self.id} (chat {self.source_chat_id} message {self.source_message_id})"


class RetryLater(Exception):
    """Try the job again in `seconds`, without counting an attempt (e.g. a flood wait)."""

    def __init__(self, seconds: float, reason: str = ""):
        self.seconds = seconds
        super().__init__(reason or f"retry in {seconds:.0f} s")


class PermanentJobError(Exception):
    """The job can never succeed (the message or its media is gone): fail it without retries."""


class JobSkipped(Exception):
    """The job is deliberately not done (e.g. the media is larger than MAX_MEDIA_SIZE_MB)."""


class LeaseLost(Exception):
    """Another process took the job over (this process's lease ran out)."""


@dataclass(frozen=True)
class Decision:
    action: Literal["retry", "defer", "fail", "skip"]
    delay: float = 0.0
    counted: bool = True
    pause_account: bool = False


@dataclass(frozen=True)
class RetryPolicy:
    """What happens to a job that raised: as data, so it can be read, tested and tuned.

    - `permanent` errors (and `PermanentJobError`) fail the job at once (bad media: trying again
      reads the same bytes);
    - `deferred` errors carry a retry time in their `seconds` attribute (a flood wait): the job
      goes back for that long, plus `jitter`, and the attempt is not counted; if it was a
      download, the account's other downloads pause as long (a flood wait is per account);
    - `outages` (the connection to Telegram dropped) are nobody's fault: the job comes back after
      `backoff_base` seconds, without counting an attempt, however long the outage lasts;
    - any other error is retried after `backoff_base * 2**(attempt-1)` seconds (at most
      `backoff_cap`, ± `jitter`) until `max_attempts` attempts have failed;
    - a job claimed `max_claims` times without being settled (every process that took it died:
      waiting for an outage or a flood wait gives its claim back) is failed, so one poisonous
      file cannot take the daemon down for ever.
    """

    max_attempts: int = 5
    backoff_base: float = 30.0
    backoff_cap: float = 3600.0
    jitter: float = 0.2
    max_claims: int = 25
    permanent: tuple[type[BaseException], ...] = (PermanentJobError,)
    deferred: tuple[type[BaseException], ...] = (RetryLater,)
    outages: tuple[type[BaseException], ...] = ()

    @classmethod
    def standard(cls, **changes: Any) -> RetryPolicy:
        """The daemon's policy: bad media is permanent, Telegram flood waits are deferred, a lost
        connection is an outage."""
        from telethon.errors import FloodWaitError

        from media_processor import MediaError
        return cls(permanent=(PermanentJobError, MediaError), deferred=(RetryLater, FloodWaitError),
                   outages=(ConnectionError,), **changes)

    def decide(self, exc: BaseException, failed_attempts: int) -> Decision:
        """What to do after `exc`, for a job that had already failed `failed_attempts` times."""
        if isinstance(exc, JobSkipped):
            return Decision("skip")
        if isinstance(exc, (PermanentJobError, *self.permanent)):
            return Decision("fail")
        if isinstance(exc, self.deferred):
            seconds = float(getattr(exc, "seconds", 0) or 0)
            return Decision("defer", seconds + random.uniform(0, self.jitter * seconds + 1), counted=False,
                            pause_account=not isinstance(exc, RetryLater))
        if isinstance(exc, self.outages):
            return Decision("defer", self.backoff_base * random.uniform(1 - self.jitter, 1 + self.jitter),
                            counted=False)
        attempt = failed_attempts + 1
        if attempt >= self.max_attempts:
            return Decision("fail")
        delay = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
        return Decision("retry", delay * random.uniform(1 - self.jitter, 1 + self.jitter))


# --- the queue: every read and write of media_jobs -------------------------------------------


def default_owner() -> str:
    """This process's name in lease_owner: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


class JobQueue:
    """Claims, leases and settles jobs on behalf of one process (`owner`)."""

    def __init__(self, pool: AsyncConnectionPool, *, owner: str | None = None, lease_seconds: float = 60.0):
        self.pool = pool
        self.owner = owner or default_owner()
        self.lease_seconds = lease_seconds

    async def _rows(self, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, params)
            return await cur.fetchall() if cur.description else []

    async def claim_staged(self, limit: int) -> list[Job]:
        """Lease up to `limit` jobs waiting for analysis."""
        rows = await self._rows(queries.queue_claim_staged, {
            "limit": limit, "owner": self.owner, "lease_seconds": self.lease_seconds})
        return await self._one_per_media([Job.from_row(r) for r in rows])

    async def claim_downloads(self, limit: int, account_ids: list[int]) -> list[Job]:
        """Lease up to `limit` jobs to download, of the accounts this process holds."""
        rows = await self._rows(queries.queue_claim_downloads, {
            "limit": limit, "owner": self.owner, "lease_seconds": self.lease_seconds,
            "account_ids": account_ids})
        return await self._one_per_media([Job.from_row(r) for r in rows])

    async def _one_per_media(self, jobs: list[Job]) -> list[Job]:
        """Keep one job per media of a claimed batch and hand the twins back: they wait until
        the first is finished, then finish by deduplication. (Twins claimed in separate claims
        are kept apart by the claim query itself.)"""
        kept: dict[str, Job] = {}
        twins = []
        for job in sorted(jobs, key=lambda j: j.id):
            if job.media_key in kept:
                twins.append(job.id)
            else:
                kept[job.media_key] = job
        await self.release(twins)
        return list(kept.values())

    async def staged_backlog(self) -> int:
        return (await self._rows(queries.queue_staged_backlog, {}))[0]["count"]

    async def heartbeat(self, job_ids: list[int]) -> set[int]:
        """Extend the leases of `job_ids`; return the ids this process still holds."""
        rows = await self._rows(queries.queue_heartbeat, {
            "job_ids": job_ids, "owner": self.owner, "lease_seconds": self.lease_seconds})
        return {r["id"] for r in rows}

    async def mark_staged(self, job: Job, path: Path) -> None:
        if not await self._rows(queries.queue_mark_staged, {
                "job_id": job.id, "owner": self.owner, "staged_path": str(path)}):
            raise LeaseLost(str(job))

    async def finish(self, job: Job, *, status: Literal["done", "skipped"] = "done",
                     media_item_id: int | None = None, note: str | None = None,
                     conn: psycopg.AsyncConnection | None = None) -> None:
        """Final status for `job` (in `conn`'s transaction if given)."""
        params = {"job_id": job.id, "owner": self.owner, "status": status,
                  "media_item_id": media_item_id, "note": note}
        if conn is not None:
            found = await _one(conn, queries.queue_finish_job, params)
        else:
            found = await self._rows(queries.queue_finish_job, params)
        if not found:
            raise LeaseLost(str(job))

    async def requeue_download(self, job: Job) -> None:
        """The job's staged file is gone: download it again."""
        if not await self._rows(queries.queue_requeue_download, {"job_id": job.id, "owner": self.owner}):
            raise LeaseLost(str(job))

    async def retry(self, job: Job, *, delay: float, error: str, counted: bool) -> None:
        if not await self._rows(queries.queue_retry_job, {
                "job_id": job.id, "owner": self.owner, "delay": delay, "error": error,
                "counted": int(counted)}):
            raise LeaseLost(str(job))

    async def fail(self, job: Job, exc: BaseException, *, counted: bool, context: dict[str, Any],
                   bad_media: bool = False) -> None:
        """Fail `job` for good, record the error, and mark its media bad if `bad_media`."""
        async with self.pool.connection() as conn, conn.transaction():
            media_item_id = None
            if bad_media:
                await conn.execute(queries.queue_ensure_media_item, _media_item_params(job))
                media_item_id = (await _one(conn, queries.queue_lock_media_item,
                                            {"media_key": job.media_key}))[0]
                await conn.execute(queries.queue_mark_media_failed, {"media_item_id": media_item_id})
            if not await _one(conn, queries.queue_fail_job, {
                    "job_id": job.id, "owner": self.owner, "error": describe_error(exc),
                    "counted": int(counted), "media_item_id": media_item_id}):
                raise LeaseLost(str(job))
            await record_error(conn, exc, job_id=job.id, context=context)

    async def release(self, job_ids: list[int]) -> list[int]:
        """Hand back jobs this process holds (shutting down); returns the ids handed back."""
        if not job_ids:
            return []
        rows = await self._rows(queries.queue_release_jobs, {"job_ids": job_ids, "owner": self.owner})
        return [r["id"] for r in rows]

    async def pause_account(self, account_id: int, seconds: float) -> None:
        await self._rows(queries.queue_pause_account, {"account_id": account_id, "seconds": seconds})

    async def media_item(self, media_key: str) -> tuple[int, str] | None:
        rows = await self._rows(queries.queue_media_item_by_key, {"media_key": media_key})
        return (rows[0]["id"], rows[0]["status"]) if rows else None

    async def depth(self) -> dict[str, int]:
        """Jobs waiting: {'queued': n, 'staged': m}."""
        rows = await self._rows(queries.queue_depth, {})
        return {"queued": 0, "staged": 0} | {r["status"]: r["jobs"] for r in rows}

    async def statuses(self, job_ids: list[int]) -> dict[int, str]:
        rows = await self._rows(queries.queue_job_statuses, {"job_ids": job_ids})
        return {r["id"]: r["status"] for r in rows}


async def _one(conn: psycopg.AsyncConnection, query: str, params: dict[str, Any]) -> tuple | None:
    """The first row `query` returns, or None."""
    cur = await conn.execute(query, params)
    return await cur.fetchone()


def describe_error(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"[:2000]


async def record_error(conn: psycopg.AsyncConnection, exc: BaseException, *, job_id: int | None,
                       context: dict[str, Any]) -> None:
    """One processing_errors row (in `conn`'s transaction)."""
    await conn.execute(queries.queue_record_error, {
        "error_type": type(exc).__name__[:100], "error_message": (str(exc) or repr(exc))[:4000],
        "context": Jsonb(context), "job_id": job_id})


def _media_item_params(job: Job) -> dict[str, Any]:
    return {"media_key": job.media_key, "media_type": job.media_type, "mime_type": job.mime_type,
            "file_size": job.file_size, "source_chat_id": job.source_chat_id,
            "source_message_id": job.source_message_id, "message_date": job.message_date}


# --- the workers -----------------------------------------------------------------------------


class Analyser(Protocol):
    async def analyse(self, path: str | Path, kind: Literal["photo", "video"]) -> list[Any]: ...


class Matcher(Protocol):
    async def assign(self, conn: psycopg.AsyncConnection, media_item_id: int, faces: list[Any], *,
                     job_id: int | None = None) -> Any: ...


class Downloader(Protocol):
    async def download(self, job: Job) -> Path:
        """Fetch the job's media into the staging area; return the file's path."""


@dataclass
class QueueStats:
    """What this process has done; `take()` returns what changed since the last call."""

    jobs_done: int = 0
    jobs_deduplicated: int = 0
    jobs_failed: int = 0
    jobs_retried: int = 0
    jobs_skipped: int = 0
    media_downloaded: int = 0
    faces_found: int = 0
    persons_created: int = 0
    analysis_ms: int = 0
    _reported: dict[str, int] = field(default_factory=dict, repr=False)

    def totals(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}

    def take(self) -> dict[str, int]:
        totals = self.totals()
        delta = {k: v - self._reported.get(k, 0) for k, v in totals.items()}
        self._reported = totals
        return {k: v for k, v in delta.items() if v}

    def give_back(self, delta: dict[str, int]) -> None:
        """`delta` (from `take()`) could not be reported: include it in the next one."""
        self._reported = {k: v - delta.get(k, 0) for k, v in self._reported.items()}


@dataclass
class WorkerConfig:
    analysis_slots: int = 2           # jobs analysed at once (the analyser bounds its processes)
    download_slots: int = 2
    max_staged: int = 16              # downloads pause while this many jobs wait for analysis
    poll_interval: float = 2.0        # seconds between claims when the queue looked empty
    grace: float = 20.0               # seconds running jobs get to finish when stopping
    metrics_interval: float = 60.0
    max_media_bytes: int | None = None
    staging_dir: Path | None = None   # orphaned staged files here are removed at start


class WorkerPool:
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
        self.stats = QueueStats()
        self._stopping = asyncio.Event()
        self._running: dict[int, asyncio.Task] = {}
        self._wake = {"analyse": asyncio.Event(), "download": asyncio.Event()}
        self._busy = {"analyse": 0, "download": 0}

    def stop(self) -> None:
        """Stop claiming; `run()` returns once running jobs are finished or handed back."""
        self._stopping.set()
        for event in self._wake.values():
            event.set()

    async def run(self) -> None:
        """Work until `stop()`; then drain (finish or hand back running jobs) and report metrics."""
        if self.config.staging_dir is not None:
            try:
                await self.remove_orphaned_files(self.config.staging_dir)
            except DB_UNAVAILABLE as exc:
                logger.warning("could not look for leftover staged files (%s); next start", _first_line(exc))
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
            await asyncio.shield(self._report_metrics())

    # --- claiming ----------------------------------------------------------------------------

    async def _claim_loop(self, stage: Literal["analyse", "download"]) -> None:
        slots = self.config.analysis_slots if stage == "analyse" else self.config.download_slots
        wake = self._wake[stage]
        failures = 0
        while not self._stopping.is_set():
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
                               "%.0f s", _first_line(exc), delay)
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
            self._wake[stage].set()
            if stage == "download":
                self._wake["analyse"].set()

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
                           "lease runs out", job, _first_line(exc))
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
        path = await self.downloader.download(job)
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
        # Once the faces are found, storing them is not interrupted by a shutdown: the work is done.
        summary = await asyncio.shield(self._store(job, faces))
        self._remove_staged(job)
        return summary

    async def _staged_file_missing(self, job: Job) -> str:
        if not job.staged_owned or job.account_id is None:
            raise PermanentJobError(f"the file {job.staged_path} is gone (moved or deleted since it was imported)")
        logger.warning("%s: its downloaded file %s is not here; if this worker runs on another machine, "
                       "mount the staging area there (STAGING_DIR) — the job goes back to be downloaded",
                       job, job.staged_path)
        await self.queue.requeue_download(job)
        return "sent back to be downloaded again (its file was missing)"

    async def _store(self, job: Job, faces: list[Any]) -> str:
        """`_store_once`, run again at once if PostgreSQL broke a deadlock with another worker by
        rolling it back (nothing of it was written), rather than waiting out the job's lease."""
        for attempt in range(1, STORE_ATTEMPTS):
            try:
                return await self._store_once(job, faces)
            except CONFLICT as exc:
                logger.info("%s: storing conflicted with another worker (%s); again, attempt %d",
                            job, _first_line(exc), attempt + 1)
                await asyncio.sleep(random.uniform(0.01, 0.1) * attempt)
        return await self._store_once(job, faces)   # the last attempt: a conflict is raised

    async def _store_once(self, job: Job, faces: list[Any]) -> str:
        """The job's faces, persons, outbox rows and status, in one transaction."""
        async with self.queue.pool.connection() as conn, conn.transaction():
            if not await _one(conn, queries.queue_lock_own_job, {"job_id": job.id, "owner": self.queue.owner}):
                raise LeaseLost(str(job))
            await conn.execute(queries.queue_ensure_media_item, _media_item_params(job))
            item_id, status = await _one(conn, queries.queue_lock_media_item, {"media_key": job.media_key})
            if status == "analysed":  # a twin finished while this one was being analysed
                await self.queue.finish(job, media_item_id=item_id, note="same media analysed before", conn=conn)
                self.stats.jobs_deduplicated += 1
                self.stats.jobs_done += 1
                return "done: a job with the same media finished first"
            result = await self.matcher.assign(conn, item_id, faces, job_id=job.id)
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
                               job.attempts + 1, self.policy.max_attempts, describe_error(exc),
                               decision.delay, exc_info=None if isinstance(exc, OSError) else exc)
            else:
                permanent = isinstance(exc, (PermanentJobError, *self.policy.permanent))
                await self.queue.fail(job, exc, counted=not permanent, context=context | {"will_retry": False},
                                      bad_media=permanent and stage == "analyse"
                                      and not isinstance(exc, PermanentJobError))
                self.stats.jobs_failed += 1
                self._remove_staged(job)
                logger.error("%s failed for good: %s (the error is on the dashboard's error list)",
                             job, describe_error(exc), exc_info=None if permanent else exc)
        except LeaseLost:
            logger.warning("%s failed (%s) but another process has taken it over", job, describe_error(exc))
        except DB_UNAVAILABLE as db_exc:
            logger.warning("%s failed (%s) and the database is unavailable to record it (%s); the job "
                           "comes back when its lease runs out", job, describe_error(exc), _first_line(db_exc))

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
                           ids, _first_line(exc))

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
                logger.warning("cannot extend the leases of running jobs (%s)", _first_line(exc))
                continue
            lost = sorted(i for i in ids if i in self._running and i not in held)
            if lost:
                logger.warning("lost the lease of job(s) %s: another process may take them over", lost)

    async def _metrics_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), self.config.metrics_interval)
            except TimeoutError:
                await self._report_metrics()

    async def _report_metrics(self) -> None:
        delta = self.stats.take()
        try:
            async with self.queue.pool.connection() as conn:
                if delta:
                    await conn.execute(queries.queue_record_metrics,
                                       {"names": list(delta), "values": list(delta.values())})
                async with conn.transaction():
                    await conn.execute(queries.queue_gauge_lock)
                    await conn.execute(queries.queue_record_depth)
        except DB_UNAVAILABLE as exc:
            self.stats.give_back(delta)
            logger.warning("cannot record metrics (%s); they are kept for the next report", _first_line(exc))

    async def remove_orphaned_files(self, staging_dir: Path) -> int:
        """Remove staged files whose job is over (a crash between finishing and removing)."""
        by_job: dict[int, list[Path]] = {}
        try:
            entries = list(staging_dir.iterdir())
        except FileNotFoundError:
            return 0
        for path in entries:
            match = re.match(r"(\d+)", path.name)
            if match and path.is_file():
                by_job.setdefault(int(match.group(1)), []).append(path)
        if not by_job:
            return 0
        statuses = await self.queue.statuses(list(by_job))
        removed = 0
        for job_id, paths in by_job.items():
            if statuses.get(job_id, "done") in FINAL_STATUSES:
                for path in paths:
                    path.unlink(missing_ok=True)
                    removed += 1
        if removed:
            logger.info("removed %d staged file(s) of finished jobs from %s", removed, staging_dir)
        return removed


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

