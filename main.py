"""Face Archiver: the command line and the daemon's composition root.

    python main.py [run] [--role all|scanner|worker|uploader]   the daemon (default)
    python main.py check                                         validate settings and database
    python main.py reindex --engine ENGINE                       re-analyse everything with another engine

Exit codes: 0 all well; 1 the daemon stopped on an error; 2 configuration or database problems.
"""

from __future__ import annotations

import argparse
import logging
import sys

import config
import database

logger = logging.getLogger("face_archiver")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _engine_dimension(engine: str) -> int:
    from media_processor import ENGINES
    return ENGINES[engine].dimension


def cmd_check(settings: config.Settings) -> int:
    """Validate the configuration, reach (or start) the database, migrate it, and say what was found."""
    try:
        prepared = database.prepare(settings, engine=settings.face_engine,
                                    dimension=_engine_dimension(settings.face_engine))
    except database.DatabaseError as exc:
        print(f"database: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"database:       {prepared.server.location}")
    print(f"schema version: {prepared.schema_version} (latest {database.latest_version()})")
    if prepared.engine:
        print(f"face engine:    {prepared.engine.engine} ({prepared.engine.dimension}-d embeddings)")
    telegram = "configured" if settings.telegram_configured else "not configured (set TG_API_ID and TG_API_HASH)"
    print(f"telegram api:   {telegram}")
    hub = settings.hub_group_id if settings.hub_group_id is not None else "not set (posts wait in the outbox)"
    print(f"hub group:      {hub}")
    print("ok")
    return EXIT_OK


def cmd_reindex(settings: config.Settings, engine: str) -> int:
    """Forget all stored faces and queue every media item again for `engine`."""
    try:
        prepared = database.prepare(settings)
        jobs = database.reindex(prepared.server.conninfo, engine, _engine_dimension(engine))
    except database.DatabaseError as exc:
        print(f"database: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"re-indexed for {engine}: {jobs} jobs queued again. Set FACE_ENGINE={engine} and start the daemon.")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="main.py", description="Face Archiver daemon and tools")
    parser.add_argument("--env-file", default=".env", help="settings file read after the environment (default .env)")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("check", help="validate settings, connect, migrate, print what was found")
    reindex = sub.add_parser("reindex", help="delete all faces and re-analyse every media item")
    reindex.add_argument("--engine", required=True, choices=["insightface", "dlib"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = config.load_settings(args.env_file)
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if args.command == "check":
        return cmd_check(settings)
    if args.command == "reindex":
        return cmd_reindex(settings, args.engine)
    print("the daemon is not built yet: only `check` and `reindex` are available", file=sys.stderr)
    return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
