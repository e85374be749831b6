"""The operator's commands of `main.py`: `retry`, `remove-chat` (recovery.py), `forget`
(erasure.py) and `recluster` (recluster.py). Each opens its own connection (the embedded server is started if needed) and works
in one transaction; the running daemon picks up what they change by itself."""

from __future__ import annotations

import argparse
import sys

import config
import database

EXIT_OK = 0        # main.py's exit codes (it imports this module: no import back)
EXIT_CONFIG = 2


def _recovery_connection(settings: config.Settings):
    import psycopg

    prepared = database.prepare(settings)
    return psycopg.connect(prepared.server.conninfo)


def cmd_retry(settings: config.Settings, args: argparse.Namespace) -> int:
    """List failed work, or queue failed jobs and posts again (all, of a chat, of an error type)."""
    import recovery

    try:
        with _recovery_connection(settings) as conn:
            if args.list:
                summary = recovery.failed_summary(conn)
                for row in summary:
                    print(f"{row['failed']:>7} failed {row['kind']}(s)  chat {row['chat_id']}  {row['error_type']}")
                print(f"{sum(r['failed'] for r in summary)} failed in all" if summary else "nothing failed")
                return EXIT_OK
            kinds = (args.only,) if args.only else recovery.KINDS
            retried = recovery.retry_failed(conn, chat_id=args.chat, error_type=args.error_type, kinds=kinds)
    except database.DatabaseError as exc:
        print(f"database: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{retried}; the running daemon picks them up by itself")
    return EXIT_OK


def cmd_remove_chat(settings: config.Settings, args: argparse.Namespace) -> int:
    """Stop watching a chat; with --drop-data also forget what came only from it."""
    import recovery

    if args.drop_data and not args.yes:
        print("--drop-data deletes the chat's jobs, errors, and the faces of media seen only there "
              "(posted media stay); add --yes to do it", file=sys.stderr)
        return EXIT_CONFIG
    try:
        with _recovery_connection(settings) as conn:
            removed = recovery.remove_chat(conn, args.chat_id, account_id=args.account, drop_data=args.drop_data)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except database.DatabaseError as exc:
        print(f"database: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if not removed.unwatched and not removed.dropped_jobs:
        print(f"chat {args.chat_id} is not watched (see the dashboard's Chats page)", file=sys.stderr)
        return EXIT_CONFIG
    print(f"chat {args.chat_id}: {removed}")
    return EXIT_OK


def cmd_forget(settings: config.Settings, args: argparse.Namespace) -> int:
    """Erase a person: its faces, crops and embeddings; its posts withdrawn, its topic closed."""
    import erasure

    if not args.yes:
        print(f"this deletes every face of person {args.person_id} and withdraws its posts; it cannot "
              f"be undone: add --yes to do it", file=sys.stderr)
        return EXIT_CONFIG
    try:
        with _recovery_connection(settings) as conn:
            forgotten = erasure.forget_person(conn, args.person_id)
    except erasure.ErasureError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except database.DatabaseError as exc:
        print(f"database: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(forgotten)
    return EXIT_OK


def cmd_recluster(settings: config.Settings, args: argparse.Namespace) -> int:
    """Re-decide every automatic assignment with the current rules; --dry-run only reports."""
    import recluster
    from identity_matcher import MatchParams

    try:
        with _recovery_connection(settings) as conn:
            report = recluster.recluster(conn, MatchParams.from_settings(settings), dry_run=args.dry_run)
    except database.DatabaseError as exc:
        print(f"database: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(report)
    if not args.dry_run:
        print("the running daemon posts and withdraws on Telegram by itself")
    return EXIT_OK


COMMANDS = {"retry": cmd_retry, "remove-chat": cmd_remove_chat, "forget": cmd_forget,
            "recluster": cmd_recluster}


def run(command: str, settings: config.Settings, args: argparse.Namespace) -> int:
    return COMMANDS[command](settings, args)


def add_parsers(sub) -> None:
    retry = sub.add_parser("retry", help="queue failed jobs and failed posts again")
    retry.add_argument("--chat", type=int, help="only those of this chat id")
    retry.add_argument("--error-type", help="only those that failed with this error (e.g. AnalysisCrashed)")
    retry.add_argument("--only", choices=["jobs", "posts"], help="only jobs (media) or only posts")
    retry.add_argument("--list", action="store_true", help="only list what failed, by chat and error type")
    remove = sub.add_parser("remove-chat", help="stop watching a chat (optionally forget its data)")
    remove.add_argument("chat_id", type=int, metavar="CHAT_ID")
    remove.add_argument("--account", type=int, help="only for this account (default: every account)")
    remove.add_argument("--drop-data", action="store_true",
                        help="also delete its jobs, errors, and the faces of media seen only there")
    remove.add_argument("--yes", action="store_true", help="confirm --drop-data")
    forget = sub.add_parser("forget", help="erase a person: faces, crops, embeddings; posts withdrawn")
    forget.add_argument("person_id", type=int, metavar="PERSON_ID", help="as in the dashboard's person page")
    forget.add_argument("--yes", action="store_true", help="confirm: it cannot be undone")
    recluster = sub.add_parser("recluster", help="re-decide every automatic face assignment with the "
                               "current rules (operator corrections are kept)")
    recluster.add_argument("--dry-run", action="store_true",
                           help="only report what would move and what Telegram would be told")
