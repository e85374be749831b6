"""The job queue in PostgreSQL: every read and write of `media_jobs` (SQL in sql/queue.sql).

A job is one source message with media. Its life:

    queued ──download (the process holding its account's client)──► staged
    staged ──analyse (any worker, any machine)──► done | failed | skipped

- **Claiming**: `SELECT … FOR UPDATE SKIP LOCKED`, a lease (`lease_owner`, `lease_expires_at`)
  that a heartbeat extends while the job runs. A process that dies stops its heartbeat; its jobs
  are claimable again when their lease runs out. Every write that finishes a job checks that the
  writer still holds the lease, so a job is never finished twice.
- **Claims**: `claims` counts claims that were never settled (the process died holding the job);
  every write handing a job back gives its claim back, so waiting out an outage costs nothing.
- **Offline accounts**: downloads are claimed only for the accounts passed in (those whose
  clients are connected) and whose `telegram_accounts.status` is 'active'.

The workers that empty it are in worker_pool.py; what happens to a job that raised is
retry_policy.py's.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from database import queries

# The database went away (restart, network): wait and try again, never crash or fail jobs for it.
DB_UNAVAILABLE: tuple[type[BaseException], ...] = (psycopg.OperationalError, psycopg.InterfaceError)

# PostgreSQL rolled a transaction back to break a deadlock or a serialization conflict with
# another worker's (SQLSTATE class 40). OperationalErrors to psycopg, but not outages: the
# database is there and the same transaction, run again, normally succeeds at once.
CONFLICT: tuple[type[BaseException], ...] = (
    psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure, psycopg.errors.TransactionRollback)
FINAL_STATUSES = frozenset({"done", "failed", "skipped"})


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



class LeaseLost(Exception):
    """Another process took the job over (this process's lease ran out)."""



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
            found = await fetch_one(conn, queries.queue_finish_job, params)
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
                await conn.execute(queries.queue_ensure_media_item, media_item_params(job))
                media_item_id = (await fetch_one(conn, queries.queue_lock_media_item,
                                            {"media_key": job.media_key}))[0]
                await conn.execute(queries.queue_mark_media_failed, {"media_item_id": media_item_id})
            if not await fetch_one(conn, queries.queue_fail_job, {
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


async def fetch_one(conn: psycopg.AsyncConnection, query: str, params: dict[str, Any]) -> tuple | None:
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


def media_item_params(job: Job) -> dict[str, Any]:
    return {"media_key": job.media_key, "media_type": job.media_type, "mime_type": job.mime_type,
            "file_size": job.file_size, "source_chat_id": job.source_chat_id,
            "source_message_id": job.source_message_id, "message_date": job.message_date}



def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
