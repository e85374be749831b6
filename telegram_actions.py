"""Applying the requests that need a Telegram client (`dashboard_actions`).

The dashboard and the scripts hold no client (one session, one process), so they record what
Telegram must do; the daemon applies it here, in id order:

- topic actions (the hub account's client, `TopicManager.apply_action`): `rename_topic`,
  `merge_persons`, `hide_person`, `unhide_person`, `delete_posts`, `update_cover`;
- chat actions (the named account's client, `ChatManager.apply_action`): `add_chat`,
  `remove_chat`, `pause_chat`, `resume_chat`.

A handler returns a note (the action is 'done'), raises `ActionWait` (not yet: it stays pending
and is not counted as an attempt), `ActionFailed` (never: 'failed' at once) or any other error
(an attempt; 'failed' after `max_attempts`). A flood wait pauses the account and the action
waits. While an action is applied its row is locked (FOR UPDATE SKIP LOCKED), so two processes
never apply the same one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

from psycopg.rows import dict_row

from flood_waits import record_flood_wait
from database import queries
from retry_policy import RetryPolicy
from stoppable import Stoppable
from telegram_errors import FLOOD_WAITS, account_state

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

logger = logging.getLogger(__name__)

TOPIC_ACTIONS = ("rename_topic", "merge_persons", "hide_person", "unhide_person", "delete_posts", "update_cover")
CHAT_ACTIONS = ("add_chat", "remove_chat", "pause_chat", "resume_chat")


class ActionWait(Exception):
    """The action cannot be applied yet (e.g. a post it concerns is being sent); try later."""


class ActionFailed(Exception):
    """The action can never be applied as asked; the message says why (shown on the dashboard)."""


class Handler(Protocol):
    """What applies some kinds of actions (TopicManager, ChatManager)."""

    kinds: tuple[str, ...]

    async def apply_action(self, action: dict[str, Any]) -> str:
        """Apply one dashboard_actions row; return a note for the log."""

    def account_for(self, action: dict[str, Any]) -> int | None:
        """The account whose client applying it uses (a flood wait pauses that one), or None."""

    def can_apply(self, action: dict[str, Any]) -> bool:
        """False if this process lacks what the action needs (e.g. the account's client)."""


def action_policy(max_attempts: int = 5) -> RetryPolicy:
    """How an action that raised is retried: `ActionFailed` never, a flood wait or a lost
    connection waits (not an attempt), anything else is an attempt, 20 s doubling."""
    return RetryPolicy(max_attempts=max_attempts, backoff_base=20.0, backoff_cap=3600.0, jitter=0.0,
                       permanent=(ActionFailed,), deferred=FLOOD_WAITS,
                       outages=(ConnectionError, OSError, asyncio.TimeoutError), outage_wait=30.0)


class ActionApplier(Stoppable):
    """Applies pending actions of the kinds its handlers know, until stopped."""

    def __init__(self, pool: AsyncConnectionPool, handlers: list[Handler], *, poll_interval: float = 2.0,
                 max_attempts: int = 5, policy: RetryPolicy | None = None):
        super().__init__()
        self.pool = pool
        self.handlers = {kind: h for h in handlers for kind in h.kinds}
        self.poll_interval = poll_interval
        self.policy = policy or action_policy(max_attempts)
        self._waiting_until: dict[int, float] = {}

    async def run(self) -> None:
        while not self.stopping:
            await self.apply_pending()
            await self.pause(self.poll_interval)

    async def apply_pending(self, limit: int = 50) -> int:
        """Apply the pending actions this process can apply; return how many were settled."""
        if not self.handlers:
            return 0
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(queries.tg_pending_actions, {"actions": list(self.handlers), "limit": limit})
            pending = await cur.fetchall()
        settled = 0
        now = asyncio.get_running_loop().time()
        for action in pending:
            if self._waiting_until.get(action["id"], 0.0) > now:
                continue
            handler = self.handlers[action["action"]]
            if not handler.can_apply(action):
                continue   # another process holds the client it needs
            settled += await self.apply(action["id"], handler)
        return settled

    async def apply(self, action_id: int, handler: Handler) -> int:
        """Apply one action under its row lock; 1 if it is settled (done or failed), else 0."""
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(queries.tg_lock_action, {"action_id": action_id})
            action = await cur.fetchone()
            if action is None:
                return 0   # applied meanwhile, or another process is applying it
            outcome = await self._run(handler, action)
            status, error, counted = outcome
            if status in ("done", "failed"):
                await cur.execute(queries.tg_finish_action, {"action_id": action_id, "status": status, "error": error})
                return 1
            await cur.execute(queries.tg_action_failed_attempt if counted else queries.tg_action_waits,
                              {"action_id": action_id, "error": error})
            return 0

    async def _run(self, handler: Handler, action: dict[str, Any]) -> tuple[str, str | None, bool]:
        what = f"action {action['id']} ({action['action']})"
        loop = asyncio.get_running_loop()
        try:
            note = await handler.apply_action(action)
        except ActionWait as exc:
            self._waiting_until[action["id"]] = loop.time() + 5.0
            return "pending", str(exc), False
        except Exception as exc:
            account, registry = handler.account_for(action), getattr(handler, "registry", None)
            state = account_state(exc)
            if state is None or account is None or registry is None:
                return await self._failed(action, exc, what, account)
            await registry.account_problem(account, exc)
            self._waiting_until[action["id"]] = loop.time() + 60.0
            return "pending", f"account {account} is {state}; applied when it can be used again", False
        self._waiting_until.pop(action["id"], None)
        logger.info("%s applied: %s", what, note)
        return "done", None, False

    async def _failed(self, action: dict[str, Any], exc: Exception, what: str,
                      account: int | None) -> tuple[str, str | None, bool]:
        """What the retry policy says of `exc`; the row says why, the log has the details."""
        decision = self.policy.decide(exc, action["attempts"])
        now = asyncio.get_running_loop().time()
        if isinstance(exc, ActionFailed):
            logger.error("%s cannot be applied: %s", what, exc)
            return "failed", str(exc), True
        if decision.action == "defer":
            wait = decision.delay
            if decision.pause_account:   # a flood wait: the account's other work pauses too
                seconds = getattr(exc, "seconds", 0)
                if account is not None:
                    wait = await record_flood_wait(self.pool, account, seconds, what)
                self._waiting_until[action["id"]] = now + wait
                return "pending", f"flood wait of {seconds} s; applied after it", False
            self._waiting_until[action["id"]] = now + wait
            return "pending", f"Telegram unreachable ({exc}); tried again when it is back", False
        attempts = action["attempts"] + 1
        error = f"{type(exc).__name__}: {exc}"
        if decision.action != "retry":
            logger.error("%s failed %d times, giving up: %s", what, attempts, error, exc_info=exc)
            return "failed", error, True
        logger.warning("%s failed (attempt %d of %d): %s", what, attempts, self.policy.max_attempts, error)
        self._waiting_until[action["id"]] = now + decision.delay
        return "pending", error, True
