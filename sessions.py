"""Account sessions: the session file of an account, its lock and permissions, and the Telethon
client built on it.

- A client is made by a *client factory* `factory(account, settings)`: `telethon_client` in
  production; the tests pass the fake Telegram server's (tests/telegram_server.py). Nothing else
  constructs clients; `client_options` is how every client of the daemon is built.
- One session file, one process (DESIGN §2): a session is SQLite, and two processes using it
  corrupt each other's state ("database is locked", then `AuthKeyDuplicatedError`). The registry
  (accounts.AccountRegistry) takes an exclusive `SessionLock` on `<session>.lock` for as long as
  it holds the client, and `init_account.py` takes the same lock, so it refuses (with a clear
  message) to open a session that a running daemon holds.
- Session files are created with mode 0600 in `SESSIONS_DIR` (mode 0700).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from config import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Account:
    """A row of telegram_accounts, as far as a client needs it (id is None before it is recorded)."""

    id: int | None
    phone: str
    session_path: Path


ClientFactory = Callable[[Account, "Settings"], Any]


def client_options(settings: Settings) -> dict[str, Any]:
    """How every Telethon client of the daemon is built (tests build theirs the same way)."""
    return dict(
        flood_sleep_threshold=settings.flood_sleep_threshold,
        # Updates missed while offline are found by the history sweeps, not by getDifference.
        catch_up=False, auto_reconnect=True, connection_retries=10, retry_delay=2,
        request_retries=5,
        # After its retries, `_call` raises the last error Telegram gave instead of a bare
        # ValueError("Request was unsuccessful"). RANDOM_ID_DUPLICATE is a 500 in Telethon's
        # table: only with this does the code that recovers a post or a topic whose answer was
        # lost ever see `RandomIdDuplicateError` (DESIGN §3, "Lost answers").
        raise_last_call_error=True,
    )


def telethon_client(account: Account, settings: Settings):
    """The production client factory: a Telethon client on the account's session file."""
    from telethon import TelegramClient

    if not settings.telegram_configured:
        raise AccountError("TG_API_ID and TG_API_HASH are not set (get them at https://my.telegram.org/apps)")
    return TelegramClient(str(account.session_path), settings.tg_api_id, settings.tg_api_hash.get_secret_value(),
                          **client_options(settings))


class AccountError(Exception):
    """An account cannot be used as it is; the message says what to do. `state`: the
    telegram_accounts.status it is in ('logged_out', 'banned'), if Telegram said."""

    def __init__(self, message: str, *, state: str | None = None):
        super().__init__(message)
        self.state = state


class SessionBusy(AccountError):
    """Another process (the daemon) holds this session file."""


def mask_phone(phone: str) -> str:
    """A phone number fit for logs: the country code and the last two digits."""
    digits = "".join(c for c in phone if c.isdigit())
    if len(digits) < 5:
        return "***"
    return f"+{digits[:2]}…{digits[-2:]}"


def session_path(settings: Settings, stored: str | None, phone: str) -> Path:
    """Where an account's session file is: its recorded path (relative ones are in SESSIONS_DIR),
    or SESSIONS_DIR/<digits of the phone>.session. Always ends in `.session` (Telethon adds it)."""
    if stored:
        path = Path(stored)
        if not path.is_absolute():
            path = settings.sessions_path / path
    else:
        path = settings.sessions_path / ("".join(c for c in phone if c.isdigit()) or "account")
    return path if path.suffix == ".session" else path.with_name(path.name + ".session")


def prepare_sessions_dir(path: Path) -> None:
    """Create the sessions folder readable by its owner only."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        os.chmod(path, 0o700)
    except OSError as exc:  # e.g. a volume owned by another user: the files are still 0600
        logger.warning("cannot make %s private (%s); check its permissions", path, exc)


def protect_session(path: Path) -> None:
    """Session files hold the account's login: owner read/write only."""
    for candidate in (path, path.with_name(path.name + "-journal")):
        if candidate.exists():
            os.chmod(candidate, 0o600)


class SessionLock:
    """An exclusive, non-blocking lock on `<session>.lock`, held while a process uses the session.

    A file lock (flock) is released by the kernel when the process dies, so a crashed daemon
    never leaves a stale lock behind.
    """

    def __init__(self, session: Path):
        self.path = session.with_name(session.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise SessionBusy(
                    f"another process holds the session {self.path.with_suffix('')}: the daemon is "
                    f"running with this account. Stop the daemon first (e.g. `docker compose stop app`), "
                    f"then try again.") from None
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> SessionLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
