"""Health that means something: `main.py health` (Docker's HEALTHCHECK) fails, saying why, when

- the daemon's heartbeat is stale (it is stuck or stopped);
- an account is no longer usable (`telegram_accounts.status` not 'active': logged out, banned):
  at once, the operator must act ("account +44…12 error: … run init_account.py");
- Telegram (an account's connection) or the database has been unreachable for longer than
  HEALTH_OUTAGE_SECONDS;
- the queue has held due work but finished none for longer than HEALTH_QUEUE_SECONDS;
- posts have been failing, none succeeding, for longer than HEALTH_POSTS_SECONDS.

The daemon gathers the facts (`HealthWatch.facts()`, with every heartbeat) into the heartbeat
file; `problems()` judges them with the settings, so the health command needs no database
connection and the dashboard's Overview can say the same words (`read_problems()`). Phone
numbers appear masked; nothing secret is ever written.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from database import queries
from job_queue import DB_UNAVAILABLE


def mask_phone(phone: str | None) -> str:
    """+447700900012 → +44…12: enough to tell accounts apart, not enough to call one."""
    phone = phone or "?"
    return phone if len(phone) <= 5 else f"{phone[:3]}…{phone[-2:]}"


class HealthWatch:
    """The daemon's side: what it sees of Telegram, the database, the queue and the posts."""

    def __init__(self, pool: AsyncConnectionPool, *, registry: Any = None, started: float | None = None):
        """`registry`: the accounts' clients this process holds (`account_ids()`, `is_connected(id)`)."""
        self.pool = pool
        self.registry = registry
        self.started = started or time.time()
        self._offline_since: dict[int, float] = {}
        self._db_down_since: float | None = None
        self._last: dict[str, Any] = {}

    def _telegram(self, now: float) -> None:
        if self.registry is None:
            return
        held = self.registry.account_ids()
        for account_id in held:
            if self.registry.is_connected(account_id):
                self._offline_since.pop(account_id, None)
            else:
                self._offline_since.setdefault(account_id, now)
        for account_id in set(self._offline_since) - set(held):
            del self._offline_since[account_id]

    async def facts(self) -> dict[str, Any]:
        now = time.time()
        self._telegram(now)
        facts: dict[str, Any] = {"started": self.started}
        try:
            async with self.pool.connection(timeout=5) as conn, conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(queries.health_accounts)
                accounts = await cur.fetchall()
                await cur.execute(queries.health_queue)
                facts["queue"] = await cur.fetchone()
                await cur.execute(queries.health_posts)
                facts["posts"] = await cur.fetchone()
            self._db_down_since = None
            facts["accounts"] = [{"id": a["id"], "label": mask_phone(a["phone_number"]), "status": a["status"],
                                  "error": (a["last_error"] or "")[:200]} for a in accounts]
            self._last = {k: facts[k] for k in ("queue", "posts", "accounts")}
        except (*DB_UNAVAILABLE, PoolTimeout):
            self._db_down_since = self._db_down_since or now
            facts |= self._last   # what was known before the database went away
        labels = {a["id"]: a["label"] for a in facts.get("accounts", [])}
        facts["telegram_offline_since"] = {labels.get(a, f"account {a}"): t for a, t in self._offline_since.items()}
        facts["database_unreachable_since"] = self._db_down_since
        return facts


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def problems(facts: dict[str, Any], settings, now: float | None = None) -> list[str]:
    """What is wrong, in words an operator can act on; [] when all is well."""
    now = now or time.time()
    found = []
    down = facts.get("database_unreachable_since")
    if down and now - down > settings.health_outage_seconds:
        found.append(f"the database has been unreachable for {_minutes(now - down)}")
    for account in facts.get("accounts", []):
        if account["status"] != "active":
            why = f" ({account['error']})" if account.get("error") else ""
            found.append(f"account {account['label']} is {account['status']}{why}: log it in again with "
                         f"`python init_account.py` (or resume it on the dashboard if you paused it)")
    for label, since in (facts.get("telegram_offline_since") or {}).items():
        if now - since > settings.health_outage_seconds:
            found.append(f"Telegram has been unreachable for account {label} for {_minutes(now - since)} "
                         f"(network, or Telegram down); its work waits")
    queue = facts.get("queue") or {}
    if queue.get("due"):
        moved = max(queue.get("progress_at") or 0, facts.get("started") or 0)
        if now - moved > settings.health_queue_seconds:
            found.append(f"the queue holds {queue['due']} due job(s) but has finished none for "
                         f"{_minutes(now - moved)}")
    posts = facts.get("posts") or {}
    failing = posts.get("failing_since")
    if posts.get("waiting") and failing and now - failing > settings.health_posts_seconds:
        found.append(f"posts into the hub have been failing for {_minutes(now - failing)} (none succeeded "
                     f"since); see the Errors page")
    return found


def read_problems(path: Path, settings, *, max_age: float) -> list[str]:
    """The problems the heartbeat file at `path` shows (a missing or stale heartbeat is one)."""
    try:
        age = time.time() - path.stat().st_mtime
        beat = json.loads(path.read_text())
    except FileNotFoundError:
        return [f"no heartbeat file {path} (the daemon is not running, or is still starting)"]
    except (OSError, ValueError) as exc:
        return [f"the heartbeat file {path} cannot be read ({exc})"]
    if age > max_age:
        return [f"the heartbeat {path} is {age:.0f} s old (more than {max_age:.0f} s): the daemon is "
                f"stuck or stopped; see its log"]
    return problems(beat.get("facts") or {}, settings)
