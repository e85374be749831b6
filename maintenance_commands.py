"""`main.py check`, `reindex` and `health`: the commands that look at an installation and
rebuild it, rather than run it. `check` is what a new user runs first; `health` is Docker's
HEALTHCHECK (it reads the heartbeat file the running daemon writes, see supervisor.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psycopg

import config
import database
from commands import python_command
from supervisor import heartbeat_path

EXIT_OK = 0        # main.py's exit codes (it imports this module: no import back)
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def engine_dimension(engine: str) -> int:
    from media_processor import ENGINES
    return ENGINES[engine].dimension


def cmd_check(settings: config.Settings, env_file: str) -> int:
    """What `run` needs, in the order it needs it, every problem said at once (exit 2 if any):
    the settings (already valid here: `main` refused them otherwise), the database (reached or
    started, migrated), the face engine's weights and whether the stored faces are that engine's,
    then Telegram. Changes nothing but the schema: a daemon running meanwhile is not disturbed."""
    problems: list[str] = []
    source = env_file if Path(env_file).is_file() else f"the environment and defaults (no {env_file})"
    print(f"settings:       valid (read from {source})")
    try:
        prepared = database.prepare(settings)
    except database.DatabaseError as exc:
        print(f"database:       {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"database:       {prepared.server.location}")
    print(f"schema version: {prepared.schema_version} (latest {database.latest_version()})")
    engine = settings.face_engine
    weights = engine_weights_problem(settings)
    print(f"face engine:    {engine}: " + ("weights missing" if weights else "weights present")
          + (f" (MODELS_DIR {settings.models_path})" if engine == "insightface" else ""))
    if weights:
        problems.append(f"FACE_ENGINE={engine}: {weights}")
    with psycopg.connect(prepared.server.conninfo) as conn:
        mismatch = database.engine_problem(conn, engine, engine_dimension(engine))
        faces = conn.execute("SELECT count(*) FROM face_embeddings").fetchone()[0]
    if prepared.engine and faces:
        print(f"stored faces:   {faces:,}, made by {prepared.engine.engine} ({prepared.engine.dimension}-d)")
    else:
        print("stored faces:   none yet (any engine can be chosen until the first face is stored)")
    if mismatch:
        problems.append(mismatch)
    python = python_command()
    if settings.telegram_configured:
        print("telegram api:   configured")
    else:
        print("telegram api:   not configured: `run` needs TG_API_ID and TG_API_HASH from "
              "https://my.telegram.org/apps (not needed for `import`)")
    hub = settings.hub_group_id if settings.hub_group_id is not None else "not set (posts wait in the outbox)"
    print(f"hub group:      {hub}")
    if problems:
        print(f"\n{len(problems)} problem(s) to fix before `{python} main.py run` or `import`:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_CONFIG
    print("ok")
    return EXIT_OK


def engine_weights_problem(settings: config.Settings) -> str | None:
    """Why the configured face engine cannot load here (its weights are missing), or None.
    Looks for the files only: loading the models takes seconds and a lot of memory."""
    from face_engines import ModelUnavailableError, find_insightface_models

    if settings.face_engine != "insightface":
        return None
    try:
        find_insightface_models(settings.models_path)
    except ModelUnavailableError as exc:
        return str(exc)
    return None


def cmd_reindex(settings: config.Settings, engine: str) -> int:
    """Forget all stored faces and queue every media item again for `engine`."""
    try:
        prepared = database.prepare(settings)
        jobs = database.reindex(prepared.server.conninfo, engine, engine_dimension(engine))
    except database.DatabaseError as exc:
        print(f"database: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"re-indexed for {engine}: {jobs} jobs queued again. Set FACE_ENGINE={engine} and start the daemon.")
    return EXIT_OK


def cmd_health(settings: config.Settings, max_age: float) -> int:
    """Exit 0 if a daemon touched DATA_DIR/heartbeat in the last `max_age` seconds and what it saw
    is well (health.py: Telegram and the database reachable, the queue moving, posts going out)."""
    import health

    path = heartbeat_path(settings)
    found = health.read_problems(path, settings, max_age=max_age)
    for problem in found:
        print(f"unhealthy: {problem}")
    if found:
        return EXIT_FAILURE
    print(f"healthy: heartbeat {time.time() - path.stat().st_mtime:.0f} s ago")
    return EXIT_OK
