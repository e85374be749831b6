"""The dashboard's own PostgreSQL role, `face_archiver_dashboard` (migrations/0007_dashboard_role.sql):
it reads everything and writes only what the dashboard writes, so a mistake in a page (or
someone at the dashboard) cannot delete faces but by "forget this person", touch the accounts,
the queue's leases or the schema.

Whoever migrates (`database.prepare`: the app; the dashboard too where it has the owner's password)
sets the role's password from DASHBOARD_DB_PASSWORD on an external server. In Docker the
dashboard's container has only that password, not POSTGRES_PASSWORD: it does not migrate, it logs
in as the role and waits for the app to have brought the schema up to date. The embedded server
trusts its local socket: the role logs in without a password there.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import config
from database import DatabaseError, Server

logger = logging.getLogger(__name__)

ROLE = "face_archiver_dashboard"


def set_password(conninfo: str, password: str) -> None:
    """Let the role log in with `password` (as the user that migrated). The password is hashed here,
    by libpq, as `psql`'s \\password does: only its verifier reaches the server (and any statement log)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        verifier = conn.pgconn.encrypt_password(password.encode(), ROLE.encode()).decode()
        # ALTER ROLE takes no parameters: the verifier goes in as a quoted literal.
        conn.execute(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(verifier)))


def ensure_password(settings: config.Settings, server: Server) -> None:
    """Set the role's password from DASHBOARD_DB_PASSWORD on an external `server`, as the user that
    migrates (database.prepare calls this: the app does it in Docker, where the dashboard's container
    holds only the role's password). Raises DatabaseError when the role does not exist."""
    secret = settings.dashboard_db_password.get_secret_value() if settings.dashboard_db_password else None
    if secret is None or server.embedded:
        return
    try:
        set_password(server.conninfo, secret)
    except psycopg.errors.UndefinedObject as exc:
        raise DatabaseError(f"the role {ROLE} does not exist: the user {conninfo_to_dict(server.conninfo).get('user')!r} "
                            "may not create roles; create it as an administrator (CREATE ROLE "
                            f"{ROLE} LOGIN) and restart, the migrations grant it the rest") from exc
    except psycopg.errors.InsufficientPrivilege:
        logger.warning("cannot set the password of %s (no CREATEROLE): using the one it has", ROLE)


def conninfo(settings: config.Settings, server: Server) -> str:
    """How the dashboard connects: `server` as the role (with DASHBOARD_DB_PASSWORD on an external
    server; raises DatabaseError without it)."""
    secret = settings.dashboard_db_password.get_secret_value() if settings.dashboard_db_password else None
    if secret is None and not server.embedded:
        raise DatabaseError("DASHBOARD_DB_PASSWORD is not set: the dashboard logs in to PostgreSQL as its "
                            f"own role, {ROLE}, and needs a password for it (openssl rand -base64 24)")
    params = conninfo_to_dict(server.conninfo)
    params.update(user=ROLE, application_name="face_archiver_dashboard")
    params.pop("password", None)
    if secret is not None and not server.embedded:
        params["password"] = secret
    return make_conninfo(**params)
