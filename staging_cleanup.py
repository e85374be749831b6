"""Removing the daemon's own leftovers from the staging area (a crash between finishing a job and
removing its file, or in the middle of a download), and nothing else.

A file is removed only when it can be proved to be the daemon's: its name is one the downloader
writes (`<job id><ext>`, or `<job id>.<8 hex digits>.part` while downloading), that job exists and
was downloaded from Telegram (not an export: those files are the operator's), and
- a finished file: the job is over and its recorded `staged_path` is this very file;
- a partial download: no process holds the job now (a running download is left alone).
Anything else (another program's file, a job id this database does not know) is left alone, and
the cleanup says so once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from pathlib import Path

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from database import queries

logger = logging.getLogger(__name__)

FINISHED_NAME = re.compile(r"(\d+)\.[0-9a-z]{1,6}")
PARTIAL_NAME = re.compile(r"(\d+)(?:\.[0-9a-z]{1,6})?\.[0-9a-f]{8}\.part")


def _candidates(staging_dir: Path) -> tuple[dict[int, list[tuple[Path, bool]]], int]:
    """Files named like the downloader's, by job id (path, is partial); and how many others."""
    by_job: dict[int, list[tuple[Path, bool]]] = {}
    others = 0
    try:
        entries = list(os.scandir(staging_dir))
    except FileNotFoundError:
        return {}, 0
    for entry in entries:
        if not entry.is_file(follow_symlinks=False):
            continue
        finished, partial = FINISHED_NAME.fullmatch(entry.name), PARTIAL_NAME.fullmatch(entry.name)
        match = finished or partial
        if match:
            by_job.setdefault(int(match.group(1)), []).append((Path(entry.path), partial is not None))
        else:
            others += 1
    return by_job, others


async def remove_orphaned_files(pool: AsyncConnectionPool, staging_dir: Path) -> int:
    """Remove the daemon's leftover files in `staging_dir` (see the module docstring); returns how many."""
    by_job, others = await asyncio.to_thread(_candidates, staging_dir)
    if not by_job:
        return 0
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(queries.queue_staging_owners, {"job_ids": list(by_job)})
        jobs = {row["id"]: row for row in await cur.fetchall()}
    doomed, kept = [], others
    for job_id, files in by_job.items():
        job = jobs.get(job_id)
        for path, partial in files:
            if job is not None and job["staged_owned"] and job["downloaded"] and (
                    (partial and not job["leased"])
                    or (not partial and job["finished"] and job["staged_path"] is not None
                        and os.path.abspath(job["staged_path"]) == os.path.abspath(path))):
                doomed.append(path)
            else:
                kept += 1
    for path in doomed:
        await asyncio.to_thread(path.unlink, missing_ok=True)
    if doomed:
        logger.info("removed %d leftover staged file(s) of finished or interrupted jobs from %s",
                    len(doomed), staging_dir)
    if kept:
        logger.info("%d other file(s) in %s left alone (in use, or not provably the daemon's)", kept, staging_dir)
    return len(doomed)
