"""Choose the chats the daemon watches.

    python add_chat.py ACCOUNT CHAT            watch CHAT with ACCOUNT
    python add_chat.py ACCOUNT CHAT --remove   stop watching it (what was found stays)
    python add_chat.py ACCOUNT CHAT --pause    stop reading it for now; --resume goes on
    python add_chat.py --list                  every chat, its progress, and requests not applied yet

ACCOUNT is the account's id or phone number (see --list). CHAT is a @username, a t.me link, an
invite link (t.me/+… or t.me/joinchat/…) or a numeric id (-100… for channels and supergroups).

This script never opens a Telegram session: a session file can be used by one process only, and
the daemon holds it. It records the request in the database; the running daemon resolves the
chat with the account's own client (joining it if needed), and reads its whole history, then
follows it live. The request's outcome shows in --list and on the dashboard.

Exit codes: 0 done; 2 bad input, configuration or database problem (the message says what to fix).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

import config
import database
from chats import parse_chat_identifier
from database import queries

EXIT_OK = 0
EXIT_INPUT = 2


def resolve_account(conn: psycopg.Connection, text: str | int) -> dict[str, Any]:
    """The telegram_accounts row named by its id or phone number; ValueError lists the known ones."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(queries.tg_all_accounts)
        accounts = cur.fetchall()
    wanted = str(text).strip()
    digits = "".join(c for c in wanted if c.isdigit())
    for account in accounts:
        if wanted.isdigit() and int(wanted) == account["id"]:
            return account
    for account in accounts:
        if digits and "".join(c for c in account["phone_number"] if c.isdigit()) == digits:
            return account
    known = ", ".join(f"{a['id']} ({a['phone_number']})" for a in accounts) or "none: log one in with init_account.py"
    raise ValueError(f"no account {wanted!r}; known accounts: {known}")


def request_chat(conn: psycopg.Connection, identifier: str, *, account_id: int | str) -> int:
    """Record a request that the daemon watch `identifier` with `account_id`; return its id.

    Raises ValueError (with a message for the operator) for a chat that cannot be understood,
    an unknown account, or a chat the account already watches. The same request twice is one.
    """
    ref = parse_chat_identifier(identifier)
    account = resolve_account(conn, account_id)
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(queries.tg_chat_listing)
        for chat in cur.fetchall():
            same = (ref.kind == "id" and chat["chat_id"] == ref.value) or \
                   (ref.kind == "username" and (chat["chat_username"] or "").lower() == ref.value)
            if same and chat["account_id"] == account["id"] and chat["state"] == "active":
                raise ValueError(f"account {account['id']} already watches «{chat['chat_title']}» ({chat['chat_id']})")
        cur.execute(queries.tg_chat_requests)
        for request in cur.fetchall():
            payload = request["payload"] or {}
            if request["status"] == "pending" and payload.get("account_id") == account["id"] \
                    and payload.get("chat") == ref.text:
                return request["id"]
        cur.execute(queries.tg_record_action, {"action": "add_chat", "payload": Jsonb(
            {"chat": ref.text, "kind": ref.kind, "account_id": account["id"]})})
        return cur.fetchone()["id"]


def change_state(conn: psycopg.Connection, identifier: str, state: str, *, account_id: int | str | None) -> list[dict]:
    """Pause, resume or remove a watched chat (only the database changes); returns the chats changed."""
    ref = parse_chat_identifier(identifier)
    if ref.kind == "invite":
        raise ValueError("an invite link does not say which chat it is: give its @username or id (see --list)")
    account = resolve_account(conn, account_id)["id"] if account_id is not None else None
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(queries.tg_set_chat_state, {
            "state": state, "checkpoint_id": None, "account_id": account,
            "chat_id": ref.value if ref.kind == "id" else None,
            "chat_username": ref.value if ref.kind == "username" else None})
        return cur.fetchall()


def listing(conn: psycopg.Connection) -> list[str]:
    """The lines of --list."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(queries.tg_chat_listing)
        chats = cur.fetchall()
        cur.execute(queries.tg_chat_requests)
        requests = cur.fetchall()
        cur.execute(queries.tg_all_accounts)
        accounts = {a["id"]: a for a in cur.fetchall()}
    lines = []
    for account_id, account in accounts.items():
        who = f"@{account['username']}" if account["username"] else account["phone_number"]
        flood = f", paused by a flood wait until {account['flood_wait_until']:%Y-%m-%d %H:%M}" \
            if account["flood_wait_until"] else ""
        lines.append(f"account {account_id} ({who}, {account['status']}{flood})")
        mine = [c for c in chats if c["account_id"] == account_id]
        if not mine:
            lines.append("  no chats")
        for c in mine:
            name = c["chat_title"] or str(c["chat_id"])
            if c["chat_username"]:
                name += f" (@{c['chat_username']})"
            progress = f"{c['processed_messages']}/{c['total_messages']} messages"
            extra = [f"{c['skipped_media']} skipped (too large)"] if c["skipped_media"] else []
            if c["jobs_waiting"]:
                extra.append(f"{c['jobs_waiting']} media waiting")
            if c["noforwards"]:
                extra.append("protected")
            if c["deferred_until"]:
                extra.append(f"deferred until {c['deferred_until']:%Y-%m-%d %H:%M}")
            lines.append(f"  {c['chat_id']:>15}  {name}  [{c['chat_type'] or '?'}, {c['state']}, "
                         f"{c['scan_mode']}]  {progress}" + (f"; {', '.join(extra)}" if extra else ""))
            if c["last_error"]:
                lines.append(f"  {'':>15}  last error: {c['last_error']}")
    if requests:
        lines.append("requests the daemon has not applied:")
        for r in requests:
            payload = r["payload"] or {}
            error = f" ({r['error']})" if r["error"] else ""
            lines.append(f"  #{r['id']} {payload.get('chat')} with account {payload.get('account_id')}: "
                         f"{r['status']}{error}")
    return lines or ["no accounts yet: log one in with `python init_account.py`"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="add_chat.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("account", nargs="?", help="account id or phone number")
    parser.add_argument("chat", nargs="?", help="@username, t.me link, invite link or numeric id")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true", help="show every chat and the requests not applied yet")
    what.add_argument("--remove", action="store_true", help="stop watching the chat")
    what.add_argument("--pause", action="store_true", help="stop reading the chat for now")
    what.add_argument("--resume", action="store_true", help="read a paused chat again")
    parser.add_argument("--env-file", default=".env", help="settings file (default .env)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.list and not (args.account and args.chat):
        parser.print_usage(sys.stderr)
        print("add_chat.py: give ACCOUNT and CHAT, or --list", file=sys.stderr)
        return EXIT_INPUT
    try:
        settings = config.load_settings(args.env_file)
        prepared = database.prepare(settings)
    except (config.ConfigError, database.DatabaseError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_INPUT
    with psycopg.connect(prepared.server.conninfo) as conn:
        if args.list:
            print("\n".join(listing(conn)))
            return EXIT_OK
        try:
            if args.remove or args.pause or args.resume:
                state = "removed" if args.remove else "paused" if args.pause else "active"
                changed = change_state(conn, args.chat, state, account_id=args.account)
                if not changed:
                    print(f"account {args.account} has no such chat in another state (see --list)", file=sys.stderr)
                    return EXIT_INPUT
                for chat in changed:
                    print(f"«{chat['chat_title'] or chat['chat_id']}» ({chat['chat_id']}) is now {chat['state']}.")
                return EXIT_OK
            action_id = request_chat(conn, args.chat, account_id=args.account)
        except ValueError as exc:
            print(f"add_chat.py: {exc}", file=sys.stderr)
            return EXIT_INPUT
    print(f"Requested (#{action_id}): the running daemon adds {args.chat} at its next check and then reads "
          f"its history; see `python add_chat.py --list` for the outcome.")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
