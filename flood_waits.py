"""Flood-wait bookkeeping: a long flood wait pauses only the account that got it.

`record_flood_wait` writes `telegram_accounts.flood_wait_until` (with jitter, so paused work does
not all come back in the same second), which every component checks with `flood_wait_left`
before it talks to Telegram for that account; the dashboard shows it.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

from database import queries

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

logger = logging.getLogger(__name__)


def flood_jitter(seconds: float) -> float:
    """A flood wait plus jitter, so paused work does not all come back in the same second."""
    return seconds * random.uniform(1.0, 1.1) + random.uniform(0.2, 1.0)


async def record_flood_wait(pool: AsyncConnectionPool, account_id: int, seconds: float, where: str) -> float:
    """Pause account `account_id` for a flood wait of `seconds` (plus jitter); return the seconds
    it now waits. Visible on the dashboard (telegram_accounts.flood_wait_until)."""
    wait = flood_jitter(seconds)
    async with pool.connection() as conn:
        row = await (await conn.execute(queries.tg_account_flood, {
            "account_id": account_id, "seconds": wait,
            "error": f"flood wait of {seconds:.0f} s on {where}; this account pauses until it is over"})).fetchone()
    left = float(row[1]) if row else wait
    logger.warning("account %s: Telegram asks to wait %.0f s (%s); this account pauses for %.0f s, "
                   "the others go on", account_id, seconds, where, left)
    return left


async def flood_wait_left(pool: AsyncConnectionPool, account_id: int) -> float:
    """Seconds account `account_id` must still wait before it talks to Telegram again."""
    async with pool.connection() as conn:
        row = await (await conn.execute(queries.tg_account_flood_left, {"account_id": account_id})).fetchone()
    return float(row[0]) if row else 0.0
