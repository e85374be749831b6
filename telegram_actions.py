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

from accounts import record_flood_wait, sleep_or_stop, stopped
from database import queries
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


class ActionApplier:
    """Applies pending actions of the kinds its handlers know, until stopped."""

    def __init__(self, pool: AsyncConnectionPool, handlers: list[Handler], *, poll_interval: float = 2.0,
                 max_attempts: int = 5):
        self.pool = pool
        self.handlers = {kind: h for h in handlers for kind in h.kinds}
        self.poll_interval = poll_interval
        self.max_attempts = max_attempts
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._waiting_until: dict[int, float] = {}

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self, stop_event: asyncio.Event | None = None) -> None:
        while not stopped(self._stopping, stop_event):
            self._wake.clear()
            await self.apply_pending()
            await sleep_or_stop(self.poll_interval, self._stopping, stop_event, self._wake)

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
        except ActionFailed as exc:
            logger.error("%s cannot be applied: %s", what, exc)
            return "failed", str(exc), True
        except FLOOD_WAITS as exc:
            account = handler.account_for(action)
            wait = exc.seconds
            if account is not None:
                wait = await record_flood_wait(self.pool, account, exc.seconds, what)
            self._waiting_until[action["id"]] = loop.time() + wait
            return "pending", f"flood wait of {exc.seconds} s; applied after it", False
        except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
            self._waiting_until[action["id"]] = loop.time() + 30.0
            return "pending", f"Telegram unreachable ({exc}); tried again when it is back", False
        except Exception as exc:
            account, registry = handler.account_for(action), getattr(handler, "registry", None)
            state = account_state(exc)
            if state is None or account is None or registry is None:
                return self._failed(action, exc, what)
            await registry.account_problem(account, exc)
            self._waiting_until[action["id"]] = loop.time() + 60.0
            return "pending", f"account {account} is {state}; applied when it can be used again", False
        self._waiting_until.pop(action["id"], None)
        logger.info("%s applied: %s", what, note)
        return "done", None, False

    def _failed(self, action: dict[str, Any], exc: Exception, what: str) -> tuple[str, str | None, bool]:
        """An attempt failed; the row says why, the log has the details."""
        attempts = action["attempts"] + 1
        error = f"{type(exc).__name__}: {exc}"
        if attempts >= self.max_attempts:
            logger.error("%s failed %d times, giving up: %s", what, attempts, error, exc_info=exc)
            return "failed", error, True
        logger.warning("%s failed (attempt %d of %d): %s", what, attempts, self.max_attempts, error)
        self._waiting_until[action["id"]] = asyncio.get_running_loop().time() + 10.0 * 2 ** attempts
        return "pending", error, True
