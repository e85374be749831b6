"""Telegram accounts: one client per active account, shared by every component of this process
(`AccountRegistry`).

- Clients come from a client factory on the account's session file, held under its session lock
  for as long as the registry holds the client (sessions: one session file, one process).
- Every reconnection bumps the account's `generation`, which makes the scanner sweep the
  account's chats again (updates missed while offline are found that way, `catch_up` being off):
  Telethon's own (its sender reconnects by itself after a dropped connection, with
  `auto_reconnect`, and then calls its `_auto_reconnect_callback`: `watch_reconnects` hooks
  there, since the client looks connected all along), and ours (a client whose Telethon gave up
  reconnecting is connected again by `run()`). A connect that breaks off after its connection
  is up (get_me or updates.GetState unanswered or cut off) is undone: Telethon starts its update
  loop only at the end of connect(), and a second connect() of a connected client does nothing.
- Long flood waits pause only the account that got them (flood_waits).
- An account Telegram logged out, banned or froze (telegram_errors.account_state) is marked in
  `telegram_accounts.status` ('logged_out', 'banned', 'frozen') with what to do in last_error,
  by whichever component met the error (`account_problem`). A logged-out or banned account's
  client is dropped, so its work waits (downloads: not held, sweeps: not connected) while the
  other accounts go on; once the operator logs it in again (init_account.py sets it 'active'),
  `run()` opens it again. A frozen account keeps its client for reading but does not post.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg.rows import dict_row

from database import queries
from flood_waits import flood_wait_left, record_flood_wait
from sessions import (Account, AccountError, ClientFactory, SessionBusy, SessionLock, mask_phone,
                      prepare_sessions_dir, protect_session, session_path, telethon_client)
from stoppable import sleep_or_stop, stopped

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from config import Settings

logger = logging.getLogger(__name__)


@dataclass
class _Held:
    account: Account
    client: Any
    lock: SessionLock
    generation: int = 1
    user_id: int | None = None
    state: str = "active"         # or 'frozen': reads, does not write


class AccountRegistry:
    """The Telegram clients this process holds: one per active account."""

    def __init__(self, settings: Settings, pool: AsyncConnectionPool, client_factory: ClientFactory | None = None,
                 *, check_interval: float = 5.0, connect_timeout: float = 60.0):
        self.settings = settings
        self.pool = pool
        self.factory = client_factory or telethon_client
        self.check_interval = check_interval
        self.connect_timeout = connect_timeout
        self.hub_account_id: int | None = None
        self._held: dict[int, _Held] = {}
        self._dropped: dict[int, Account] = {}   # not held: logged out, banned, paused, …
        self._stopping = asyncio.Event()

    # --- start and stop ------------------------------------------------------------------------

    async def start(self) -> list[int]:
        """Connect a client for every account to hold; return their ids. An account that cannot be
        used (not logged in, session held elsewhere) is recorded with a reason and left out."""
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(queries.tg_all_accounts)
            every = await cur.fetchall()
        rows = [row for row in every if row["status"] == "active"]
        # The others (logged out, banned, paused, …) are opened once active again (_reopen_logged_in_again).
        self._dropped.update((row["id"], self._account(row)) for row in every if row["status"] != "active")
        self.hub_account_id = self._pick_hub(rows)
        prepare_sessions_dir(self.settings.sessions_path)
        for row in rows:
            account = self._account(row)
            try:
                await self._open(account)
            except AccountError as exc:
                logger.error("account %s (%s) is not used: %s", account.id, mask_phone(account.phone), exc)
                await self._note_problem(account.id, str(exc),
                                         status=None if isinstance(exc, SessionBusy) else exc.state or "error")
                if not isinstance(exc, SessionBusy):
                    self._dropped[account.id] = account   # opened once it is logged in again
            except (OSError, asyncio.TimeoutError) as exc:
                # Telegram unreachable right now: keep the client, run() connects it later.
                logger.warning("account %s: cannot connect yet (%s); retrying in the background",
                               account.id, exc or type(exc).__name__)
        if not self._held:
            logger.warning("no Telegram account is usable; log one in with `python init_account.py`")
        return self.account_ids()

    def _account(self, row: dict[str, Any]) -> Account:
        return Account(row["id"], row["phone_number"],
                       session_path(self.settings, row["session_file_path"], row["phone_number"]))

    def _pick_hub(self, rows: list[dict[str, Any]]) -> int | None:
        wanted = (self.settings.hub_account or "").strip()
        if wanted:
            digits = "".join(c for c in wanted if c.isdigit())
            for row in rows:
                phone = "".join(c for c in row["phone_number"] if c.isdigit())
                if wanted.isdigit() and int(wanted) == row["id"]:
                    return row["id"]
                if digits and phone == digits:
                    return row["id"]
            logger.error("HUB_ACCOUNT=%s matches no active account; nothing is posted until it does",
                         mask_phone(wanted) if len(wanted) > 6 else wanted)
            return None
        return rows[0]["id"] if rows else None

    async def _open(self, account: Account) -> None:
        lock = SessionLock(account.session_path)
        lock.acquire()
        try:
            client = self.factory(account, self.settings)
        except Exception:
            lock.release()
            raise
        held = _Held(account, client, lock)
        watch_reconnects(client, lambda: self._reconnected(held, "Telethon reconnected by itself"))
        self._held[account.id] = held
        await self._connect(held)

    def _reconnected(self, held: _Held, how: str) -> None:
        held.generation += 1
        logger.info("account %s: %s; its chats are swept again for anything missed", held.account.id, how)

    async def _connect(self, held: _Held) -> None:
        from telethon import errors

        client, account = held.client, held.account
        # get_me, not is_user_authorized: the latter answers False for *any* RPC error (a flood
        # wait, a server hiccup), which would mark a logged-in account as logged out for good.
        # Telethon's connect() itself asks get_me when it has no update state yet (every fresh
        # process): its RPC errors come out of connect(), and are handled the same way.
        try:
            await asyncio.wait_for(client.connect(), self.connect_timeout)
            protect_session(account.session_path)
            me = await client.get_me()   # None when the session is not logged in
        except (errors.UnauthorizedError, errors.AuthKeyError) as exc:
            me = exc
        except errors.RPCError as exc:
            # Not a logout: treated like an outage, so start() and run() try again later (after
            # the flood wait, if it is one: asking again during it would only make it longer).
            await _disconnect(client)
            if isinstance(exc, (errors.FloodWaitError, errors.FloodPremiumWaitError)):
                await record_flood_wait(self.pool, account.id, exc.seconds, "checking the login")
            raise ConnectionError(f"Telegram did not say who the account is ({type(exc).__name__}: {exc})") from exc
        except (OSError, asyncio.TimeoutError):
            # connect() broke off after the connection was up (its get_me or updates.GetState
            # unanswered or cut off): Telethon then looks connected but never started its update
            # loop, and a second connect() returns at once ("already connected"). Disconnect, so
            # that the next attempt is a whole connect; else no live update would ever be handled.
            await _disconnect(client)
            raise
        if me is None or isinstance(me, Exception):
            self._held.pop(account.id, None)
            await _disconnect(client)
            held.lock.release()
            why = f" (Telegram said: {me})" if isinstance(me, Exception) else ""
            from telegram_errors import account_state
            raise AccountError(f"the session {account.session_path.name} is not logged in{why}: run "
                               f"`python init_account.py` for this phone number",
                               state=account_state(me) if isinstance(me, Exception) else "logged_out")
        held.user_id = me.id
        name = " ".join(p for p in (getattr(me, "first_name", None), getattr(me, "last_name", None)) if p)
        async with self.pool.connection() as conn:
            await conn.execute(queries.tg_account_connected, {
                "account_id": account.id, "telegram_user_id": me.id,
                "username": getattr(me, "username", None), "display_name": name or None})
        logger.info("account %s (%s) connected as user %s", account.id, mask_phone(account.phone), me.id)

    async def _note_problem(self, account_id: int, error: str, *, status: str | None) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(queries.tg_account_problem,
                               {"account_id": account_id, "error": error, "status": status})

    async def close(self) -> None:
        """Disconnect every client and release the sessions."""
        for held in list(self._held.values()):
            try:
                await _disconnect(held.client)
            except Exception as exc:  # closing: report and go on with the others
                logger.warning("account %s: error while disconnecting: %s", held.account.id, exc)
            finally:
                held.lock.release()
        self._held.clear()

    # --- what the components use ---------------------------------------------------------------

    def account_ids(self) -> list[int]:
        """The accounts whose clients this process holds."""
        return sorted(self._held)

    def client(self, account_id: int):
        """The client of `account_id`; KeyError if this process does not hold it."""
        return self._held[account_id].client

    def holds(self, account_id: int | None) -> bool:
        return account_id is not None and account_id in self._held

    def user_id(self, account_id: int) -> int | None:
        return self._held[account_id].user_id

    def generation(self, account_id: int) -> int:
        """Grows by one every time the account's client (re)connects."""
        held = self._held.get(account_id)
        return held.generation if held else 0

    def hub_client(self):
        """The client that posts to the hub, or None if this process does not hold it."""
        if self.hub_account_id is None or self.hub_account_id not in self._held:
            return None
        held = self._held[self.hub_account_id]
        return held.client if held.state == "active" else None

    def is_connected(self, account_id: int) -> bool:
        held = self._held.get(account_id)
        return bool(held and held.client.is_connected())

    # --- keeping the clients connected ---------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, stop_event: asyncio.Event | None = None) -> None:
        """Reconnect clients that lost their connection, until stopped."""
        from telethon import errors

        while not stopped(self._stopping, stop_event):
            for held in list(self._held.values()):
                # Connected but never told who it is (its get_me at start broke off): check it now.
                checked = held.user_id is not None
                if (held.client.is_connected() and checked) or await flood_wait_left(self.pool, held.account.id) > 0:
                    continue
                try:
                    if not checked:  # never connected since start: check the login too
                        await self._connect(held)
                    else:
                        await asyncio.wait_for(held.client.connect(), self.connect_timeout)
                except (OSError, asyncio.TimeoutError, errors.RPCError) as exc:
                    # connect() can fail after the connection is up (Telegram refused its first
                    # request): disconnect, or is_connected() stays true and it is never retried.
                    await _disconnect(held.client)
                    logger.warning("account %s is offline (%s); trying again in %.0f s",
                                   held.account.id, exc, self.check_interval)
                    continue
                except AccountError as exc:
                    logger.error("account %s is not used: %s", held.account.id, exc)
                    await self._note_problem(held.account.id, str(exc), status=exc.state or "error")
                    self._dropped[held.account.id] = held.account
                    continue
                self._reconnected(held, "reconnected")
            await self._reopen_logged_in_again()
            await sleep_or_stop(self.check_interval, self._stopping, stop_event)

    async def account_problem(self, account_id: int, exc: BaseException) -> str | None:
        """If `exc` says account `account_id` is logged out, banned or frozen: mark it (status
        and what to do), drop its client unless it is only frozen, and return the state; else
        None. Every component calls this with the Telegram errors it meets."""
        from telegram_errors import ACCOUNT_ADVICE, account_state

        state = account_state(exc)
        if state is None:
            return None
        held = self._held.get(account_id)
        if held is not None and held.state == state:
            return state
        logger.error("account %s: %s (Telegram said %s)", account_id, ACCOUNT_ADVICE[state], type(exc).__name__)
        await self._note_problem(account_id, f"{ACCOUNT_ADVICE[state]} (Telegram said {type(exc).__name__})",
                                 status=state)
        if held is not None:
            if state == "frozen":
                held.state = state
            else:
                self._held.pop(account_id, None)
                self._dropped[account_id] = held.account
                try:
                    await _disconnect(held.client)
                finally:
                    held.lock.release()
        return state

    async def _reopen_logged_in_again(self) -> None:
        """Open the accounts not held (dropped while running, or not active at start) whose status
        is 'active' again."""
        if not self._dropped:
            return
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(queries.tg_account_statuses,
                                             {"account_ids": list(self._dropped)})).fetchall()
        for account_id, status in rows:
            if status != "active":
                continue
            account = self._dropped.pop(account_id)
            try:
                await self._open(account)
            except AccountError as exc:   # still not usable (the lock is released)
                logger.warning("account %s is active again but cannot be used: %s", account_id, exc)
                self._dropped[account_id] = account
                continue
            except (OSError, asyncio.TimeoutError) as exc:   # held; run() connects it later
                logger.warning("account %s is logged in again but offline (%s)", account_id, exc)
                continue
            async with self.pool.connection() as conn:
                await conn.execute(queries.tg_wake_account_jobs, {"account_id": account_id})
            logger.info("account %s is logged in again; its work goes on", account_id)

    def state(self, account_id: int) -> str | None:
        """'active' or 'frozen' for a held account, else None."""
        held = self._held.get(account_id)
        return held.state if held else None


def watch_reconnects(client: Any, on_reconnect: Callable[[], None]) -> bool:
    """Call `on_reconnect()` whenever Telethon's sender reconnects by itself.

    Telethon (1.x) reconnects a dropped connection inside its `MTProtoSender` without the client
    ever looking disconnected, then runs the sender's `_auto_reconnect_callback` (the client's
    `_handle_auto_reconnect`, which does no catch-up). There is no public hook, so the callback
    is wrapped; False (and a warning) if this Telethon has no such attribute."""
    sender = getattr(client, "_sender", None)
    if sender is None or not hasattr(sender, "_auto_reconnect_callback"):
        logger.warning("this Telethon has no reconnect callback: sweeps after its own reconnects "
                       "wait for the next sweep interval")
        return False
    original = sender._auto_reconnect_callback

    async def reconnected() -> None:
        on_reconnect()
        if original is not None:
            await original()

    sender._auto_reconnect_callback = reconnected
    return True


async def _disconnect(client) -> None:
    result = client.disconnect()
    if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
        await result
