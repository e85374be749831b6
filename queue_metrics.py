"""The queue's metrics: counters of each process go to `processing_metrics` every minute as
deltas (`jobs_done`, `jobs_deduplicated`, `jobs_failed`, `jobs_retried`, `jobs_skipped`,
`media_downloaded`, `faces_found`, `persons_created`, `analysis_ms`); the queue depth gauges
(`queue_depth`, `queue_queued`, `queue_staged`) once a minute whatever the number of processes.
A report that cannot be written (the database is away) is kept for the next one.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from psycopg_pool import AsyncConnectionPool

from database import queries
from job_queue import DB_UNAVAILABLE, first_line

logger = logging.getLogger(__name__)


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


async def report_metrics(pool: AsyncConnectionPool, stats: QueueStats) -> None:
    """Write what changed in `stats` since the last report, and the depth gauges."""
    delta = stats.take()
    try:
        async with pool.connection() as conn:
            if delta:
                await conn.execute(queries.queue_record_metrics,
                                   {"names": list(delta), "values": list(delta.values())})
            async with conn.transaction():
                await conn.execute(queries.queue_gauge_lock)
                await conn.execute(queries.queue_record_depth)
    except DB_UNAVAILABLE as exc:
        stats.give_back(delta)
        logger.warning("cannot record metrics (%s); they are kept for the next report", first_line(exc))
