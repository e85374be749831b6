"""What the operator can do about failed work and unwanted chats, for `main.py retry` /
`main.py remove-chat` and the dashboard's Errors page (SQL in sql/recovery.sql).

- `failed_summary`: failed jobs and posts by kind, chat and error type;
- `retry_failed`: failed jobs and/or failed posts (all, of one chat, of one error type) get a
  fresh budget: jobs are downloaded again (exports analysed again where their file is), their
  media analysed again even if it was marked unreadable; posts are due again (with the same
  random_id: a post Telegram got is not sent twice). The daemon picks them up by itself.
- `remove_chat`: stop watching a chat; its work not done yet is skipped. With `drop_data`, also
  forget what came from it: its jobs, errors and watch records, and the media seen only there
  (their faces and unsent posts), except media already posted in the hub (withdrawing posts is
  erasure's business; they are counted in the result).

Every function runs in one transaction on a synchronous connection.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from database import queries

KINDS = ("jobs", "posts")


@dataclass(frozen=True)
class Retried:
    jobs: int
    posts: int

    def __str__(self) -> str:
        return f"{self.jobs} failed job(s) and {self.posts} failed post(s) queued again"


@dataclass(frozen=True)
class RemovedChat:
    unwatched: int          # watch records (chat, account) now removed
    skipped_jobs: int       # work not done yet, skipped
    dropped_media: int = 0  # media items forgotten with their faces and unsent posts
    kept_posted: int = 0    # media items kept because the hub has a post of them
    dropped_jobs: int = 0
    dropped_errors: int = 0

    def __str__(self) -> str:
        text = f"{self.unwatched} watch record(s) removed, {self.skipped_jobs} waiting job(s) skipped"
        if self.dropped_media or self.dropped_jobs:
            text += (f"; forgotten: {self.dropped_media} media item(s) with their faces, "
                     f"{self.dropped_jobs} job(s), {self.dropped_errors} error(s)")
        if self.kept_posted:
            text += f"; {self.kept_posted} media item(s) kept: they are posted in the hub"
        return text


def failed_summary(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """[{kind: 'job'|'post', chat_id, error_type, failed}], most frequent first."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(queries.recovery_failed_summary).fetchall()


def retry_failed(conn: psycopg.Connection, *, chat_id: int | None = None, error_type: str | None = None,
                 kinds: tuple[str, ...] = KINDS) -> Retried:
    """Queue failed jobs and/or posts again (`kinds`), of one chat / error type or all."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kind(s) {sorted(unknown)}: use {KINDS}")
    params = {"chat_id": chat_id, "error_type": error_type}
    with conn.transaction():
        jobs = posts = 0
        if "jobs" in kinds:
            conn.execute(queries.recovery_retry_media, params)
            jobs = len(conn.execute(queries.recovery_retry_jobs, params).fetchall())
        if "posts" in kinds:
            posts = len(conn.execute(queries.recovery_retry_posts, params).fetchall())
    return Retried(jobs, posts)


def remove_chat(conn: psycopg.Connection, chat_id: int, *, account_id: int | None = None,
                drop_data: bool = False) -> RemovedChat:
    """Stop watching `chat_id` (with `account_id`, or every account); see the module docstring."""
    if drop_data and account_id is not None:
        raise ValueError("dropping a chat's data removes it for every account: leave out the account")
    params = {"chat_id": chat_id, "account_id": account_id}
    with conn.transaction():
        unwatched = conn.execute(queries.recovery_unwatch_chat, params).fetchall()
        skipped = conn.execute(queries.recovery_skip_chat_jobs, params).fetchall()
        result = RemovedChat(len(unwatched), len(skipped))
        if drop_data:
            media = conn.execute(queries.recovery_chat_media, params).fetchall()
            doomed = [media_id for media_id, posted in media if not posted]
            persons = [r[0] for r in conn.execute(queries.recovery_persons_of_media,
                                                  {"media_item_ids": doomed}).fetchall()]
            conn.execute(queries.recovery_delete_media, {"media_item_ids": doomed})
            for person_id in sorted(persons):
                conn.execute(queries.persons_refresh, {"person_id": person_id})
            jobs, errors, _ = conn.execute(queries.recovery_delete_chat_records, params).fetchone()
            result = RemovedChat(len(unwatched), len(skipped), len(doomed), len(media) - len(doomed),
                                 jobs, errors)
    for _, path, owned in skipped:  # the daemon's own downloads of the skipped jobs
        if owned and path:
            try:
                os.unlink(path)
            except OSError:
                pass  # gone already, or another machine's staging area: its cleanup removes it
    return result
