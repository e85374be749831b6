"""Retention, run by the daemon on a schedule (not left to cron): metrics older than
METRICS_RETENTION_DAYS, resolved errors older than ERRORS_RETENTION_DAYS (the errors of work that
is still failed stay), and pending faces that met nobody within PENDING_FACE_DAYS (0 keeps them)
are deleted. SQL in sql/retention.sql. Every process may run it: the deletes are idempotent, and
the pending pool is changed under the identity matcher's own lock."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from database import queries
from identity_matcher import PERSONS_LOCK
from job_queue import DB_UNAVAILABLE, first_line
from stoppable import Stoppable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionSettings:
    metrics_days: int = 30
    errors_days: int = 90
    pending_face_days: int = 180   # 0: pending faces are kept for ever
    interval: float = 3600.0       # seconds between sweeps

    @classmethod
    def from_settings(cls, settings, **changes) -> RetentionSettings:
        return cls(metrics_days=settings.metrics_retention_days, errors_days=settings.errors_retention_days,
                   pending_face_days=settings.pending_face_days, **changes)


class Retention(Stoppable):
    def __init__(self, pool: AsyncConnectionPool, settings: RetentionSettings):
        super().__init__()
        self.pool = pool
        self.settings = settings

    async def sweep(self) -> dict[str, int]:
        """One round; returns how many rows of each kind went."""
        s = self.settings
        removed = {}
        async with self.pool.connection() as conn:
            removed["metrics"] = (await conn.execute(queries.retention_metrics, {"days": s.metrics_days})).rowcount
            removed["errors"] = (await conn.execute(queries.retention_errors, {"days": s.errors_days})).rowcount
            removed["pending_faces"] = 0
            if s.pending_face_days > 0:
                async with conn.transaction():
                    await conn.execute(queries.retention_pending_lock, {"key": PERSONS_LOCK})
                    removed["pending_faces"] = (await conn.execute(
                        queries.retention_pending_faces, {"days": s.pending_face_days})).rowcount
        if any(removed.values()):
            logger.info("retention: removed %d metric row(s), %d resolved error(s), %d pending face(s) "
                        "that met nobody", removed["metrics"], removed["errors"], removed["pending_faces"])
        return removed

    async def run(self) -> None:
        """Sweep now, then every `interval` seconds, until stopped."""
        while not self.stopping:
            try:
                await self.sweep()
            except DB_UNAVAILABLE as exc:
                logger.warning("retention: the database is unavailable (%s); next round", first_line(exc))
            if await self.until_stopped(self.settings.interval):
                return
