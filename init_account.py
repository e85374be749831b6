"""Log a Telegram account in, once, interactively; the daemon then uses it.

    .venv/bin/python init_account.py [PHONE]

Asks for the phone number (international format, e.g. +15551234567), the login code Telegram
sends to the account's other sessions (or by SMS), and the two-step verification password if
the account has one. The session file goes to SESSIONS_DIR (mode 0600: it is the login) and the
account is recorded in telegram_accounts; the daemon picks it up at its next start. Running it
again for an account that is logged in only refreshes the record.

A session file can be used by one process only. If the daemon is running with this account,
stop it first (e.g. `docker compose stop app`): this script says so instead of corrupting it.

Exit codes: 0 logged in; 1 login failed (wrong code or password); 2 configuration, database or
session problems (the message says what to fix).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import inspect
import os
import sqlite3
import sys
import termios
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

import config
import database
from commands import python_command
from sessions import (Account, AccountError, ClientFactory, SessionBusy, SessionLock, mask_phone,
                      prepare_sessions_dir, protect_session, session_path, telethon_client)
from database import queries

EXIT_OK = 0
EXIT_LOGIN = 1
EXIT_SETUP = 2
ATTEMPTS = 3


class LoginFailed(Exception):
    """The code or password was wrong too often, or Telegram refused the login."""


class TelegramUnreachable(LoginFailed):
    """Telegram's servers cannot be reached from this machine (no network, a firewall)."""


Ask = Callable[[str], "str | Awaitable[str]"]


async def answer(ask: Ask, prompt: str) -> str:
    """What `ask(prompt)` returns, whether it is a plain function (input) or a coroutine
    (`terminal_line`, which a signal can interrupt)."""
    reply = ask(prompt)
    return await reply if inspect.isawaitable(reply) else reply


async def terminal_line(prompt: str, *, secret: bool = False) -> str:
    """A line typed on standard input, read by the event loop instead of a blocking `input()`:
    the daemon's signal handlers run meanwhile, so Ctrl-C or SIGTERM stops the prompt at once
    (cancelling this), and no thread is left blocked in a read that delays the exit.
    `secret`: the terminal does not echo it (a password); echo is restored however this ends."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    saved = None
    if secret and os.isatty(fd):
        saved = termios.tcgetattr(fd)
        quiet = termios.tcgetattr(fd)
        quiet[3] &= ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSAFLUSH, quiet)
    sys.stdout.write(prompt)
    sys.stdout.flush()
    typed = bytearray()
    line: asyncio.Future[str] = loop.create_future()

    def readable() -> None:
        chunk = os.read(fd, 4096)
        typed.extend(chunk)
        if line.done():
            return
        if not chunk:
            line.set_exception(EOFError("standard input closed before an answer was typed"))
        elif b"\n" in typed:
            line.set_result(typed.split(b"\n", 1)[0].decode(errors="replace"))

    loop.add_reader(fd, readable)
    try:
        return await line
    finally:
        loop.remove_reader(fd)
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            sys.stdout.write("\n")
            sys.stdout.flush()


async def terminal_secret(prompt: str) -> str:
    return await terminal_line(prompt, secret=True)


def normalise_phone(text: str) -> str:
    digits = "".join(c for c in text if c.isdigit())
    if not 7 <= len(digits) <= 15:
        raise ValueError(f"{text!r} is not a phone number: give it in international format, e.g. +15551234567")
    return f"+{digits}"


def locked_message(path: Path) -> str:
    return (f"the session {path} is in use by another process (\"database is locked\"): the daemon holds "
            f"this session. Stop the daemon first (e.g. `docker compose stop app`), then run init_account.py again.")


def _known_account(conninfo: str, phone: str) -> dict[str, Any] | None:
    with psycopg.connect(conninfo) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(queries.tg_all_accounts)
        return next((a for a in cur.fetchall() if a["phone_number"] == phone), None)


def _record_account(conninfo: str, values: dict[str, Any]) -> dict[str, Any]:
    with psycopg.connect(conninfo) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(queries.tg_upsert_account, values)
        return cur.fetchone()


async def login(settings: config.Settings, conninfo: str, phone: str, *, factory: ClientFactory = telethon_client,
                ask: Ask = input, ask_secret: Ask = getpass.getpass,
                say: Callable[[str], Any] = print) -> dict[str, Any]:
    """Log `phone` in (asking for the code and 2FA password) and record the account; returns its row.

    `ask`/`ask_secret` may be plain functions or coroutines (`terminal_line`). Raises SessionBusy
    (the daemon holds the session), AccountError (other setup problems), TelegramUnreachable or
    LoginFailed. Cancelling it (a signal) records nothing.
    """
    phone = normalise_phone(phone)
    known = await asyncio.to_thread(_known_account, conninfo, phone)
    path = session_path(settings, known["session_file_path"] if known else None, phone)
    prepare_sessions_dir(path.parent)
    with SessionLock(path):
        try:
            client = factory(Account(known["id"] if known else None, phone, path), settings)
            me = await _sign_in(client, phone, ask, ask_secret, say)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc).lower():
                raise SessionBusy(locked_message(path)) from None
            raise AccountError(f"the session file {path} cannot be used ({exc}); move it away and log in again") from None
        protect_session(path)
    stored = path.name if path.parent.resolve() == settings.sessions_path.resolve() else str(path)
    name = " ".join(p for p in (getattr(me, "first_name", None), getattr(me, "last_name", None)) if p) or None
    row = await asyncio.to_thread(_record_account, conninfo, {
        "phone_number": phone, "session_file_path": stored, "telegram_user_id": me.id,
        "username": getattr(me, "username", None), "display_name": name})
    return {"id": row["id"], "created": row["created"], "user_id": me.id, "name": name,
            "username": getattr(me, "username", None), "session": path}


async def _sign_in(client: Any, phone: str, ask: Ask, ask_secret: Ask, say: Callable[[str], Any]) -> Any:
    from telethon import errors

    try:
        await client.connect()
    except (OSError, EOFError, asyncio.TimeoutError) as exc:  # ConnectionError, IncompleteReadError
        raise TelegramUnreachable(
            f"Telegram cannot be reached from this machine ({type(exc).__name__}: {exc}); check the "
            "network connection (and any firewall or proxy), then try again: nothing was recorded") from None
    try:
        if await client.is_user_authorized():
            say("This session is already logged in.")
            return await client.get_me()
        await client.send_code_request(phone)
        say(f"Telegram sent a login code to {mask_phone(phone)} (in the Telegram app, or by SMS).")
        for attempt in range(1, ATTEMPTS + 1):
            code = (await answer(ask, "Login code: ")).strip().replace(" ", "")
            try:
                await client.sign_in(phone=phone, code=code)
                return await client.get_me()
            except errors.SessionPasswordNeededError:
                return await _password(client, ask_secret, say)
            except (errors.PhoneCodeInvalidError, errors.PhoneCodeEmptyError):
                say(f"That code is not right ({ATTEMPTS - attempt} tries left).")
            except errors.PhoneCodeExpiredError:
                raise LoginFailed("the code expired: run init_account.py again for a new one") from None
        raise LoginFailed("wrong code too many times; run init_account.py again")
    finally:
        result = client.disconnect()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            await result


async def _password(client: Any, ask_secret: Ask, say: Callable[[str], Any]) -> Any:
    from telethon import errors

    say("The account has two-step verification.")
    for attempt in range(1, ATTEMPTS + 1):
        password = await answer(ask_secret, "Two-step verification password: ")
        try:
            await client.sign_in(password=password)
            return await client.get_me()
        except errors.PasswordHashInvalidError:
            say(f"That password is not right ({ATTEMPTS - attempt} tries left).")
    raise LoginFailed("wrong password too many times; run init_account.py again")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="init_account.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("phone", nargs="?", help="the account's phone number, e.g. +15551234567")
    parser.add_argument("--env-file", default=".env", help="settings file (default .env)")
    args = parser.parse_args(argv)
    try:
        settings = config.load_settings(args.env_file)
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_SETUP
    if not settings.telegram_configured:
        print("TG_API_ID and TG_API_HASH are not set: get them at https://my.telegram.org/apps", file=sys.stderr)
        return EXIT_SETUP
    try:
        prepared = database.prepare(settings)
        phone = args.phone or input("Phone number (international format, e.g. +15551234567): ")
        account = asyncio.run(login(settings, prepared.server.conninfo, phone))
    except (database.DatabaseError, ValueError, AccountError) as exc:
        print(f"init_account.py: {exc}", file=sys.stderr)
        return EXIT_SETUP
    except LoginFailed as exc:
        print(f"init_account.py: login failed: {exc}", file=sys.stderr)
        return EXIT_LOGIN
    except (KeyboardInterrupt, EOFError):
        print("\ninterrupted: nothing was recorded", file=sys.stderr)
        return EXIT_LOGIN
    who = f"{account['name'] or 'user'}" + (f" (@{account['username']})" if account["username"] else "")
    print(f"Logged in as {who}, Telegram user {account['user_id']}. Account {account['id']} is "
          f"{'recorded' if account['created'] else 'updated'}; session {account['session']} (mode 0600).")
    print(f"Start (or restart) the daemon to use it; add chats with `{python_command()} add_chat.py "
          f"{account['id']} @chat`.")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
