"""Heal a database matched by older rules: `main.py recluster [--dry-run]` and the dashboard's
"Re-decide automatic assignments" (review page).

`recluster(conn, params)` re-decides every automatic assignment (and the pending pool) with the
current rules, as if the faces arrived again in the order they were stored (recluster_replay.py
says why that order), and writes what changed, in ONE
transaction: interrupted, nothing of it is left; run again, it starts over from the same state.
It never touches the operator's facts: names, merges (faces follow merged_into), faces the
operator placed, manual covers, hidden persons' faces, faces in review, "not this person"
rejections (recluster_replay.py says how each is kept).

What Telegram must be told goes through the outbox and the action queue exactly as the
operator's moves do (persons.py): a person left without a face in a media item has that post
withdrawn (not sent yet: cancelled; posted: a ``delete_posts`` action for the daemon); a person
that gained a face in a media item has it due (uploaded_media's unique (topic, media item) keeps
what it already has from being posted twice). A person emptied, unnamed, without topic and posts,
is dissolved; new persons get a topic with their first post.

While it runs, the persons lock and a lock on every person row keep the daemon's workers
waiting, so the plan is made and written on faces nobody changes meanwhile: 10-19 s for the
5,130 faces-lfw photos (5,200-5,470 faces; bench/bench_suggestions.py, 2 cores shared with other
jobs), the replay's Python loop being most of it. `dry_run` makes the same changes and rolls them back, so its
report (posts withdrawn and due included) is exactly what a real run would do now.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

import psycopg
from psycopg.types.json import Jsonb

from database import queries
from identity_matcher import PERSONS_LOCK, MatchParams
from recluster_replay import Placement, StoredFace, Thresholds, replay

PER_PERSON_LINES = 50   # the report lists at most this many persons (most changed first)


@dataclass
class Report:
    dry_run: bool
    faces: int = 0                   # faces decided again (not operator facts)
    unchanged: int = 0
    moved: int = 0                   # from one person to another
    left: int = 0                    # out of a person, to pending (or review)
    joined: int = 0                  # from pending into a person
    created: list[int] = field(default_factory=list)
    dissolved: list[int] = field(default_factory=list)
    cancelled_posts: int = 0         # due posts withdrawn before they were sent
    deleted_posts: int = 0           # posted messages to delete (delete_posts actions)
    due_posts: int = 0
    persons: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        head = ("Dry run: nothing was changed. A real run would do this:" if self.dry_run
                else "Reclustered:")
        lines = [head,
                 f"  {self.faces} automatic or pending faces decided again in {self.seconds:.1f} s: "
                 f"{self.unchanged} unchanged, {self.moved} to another person, {self.left} out to "
                 f"the pending pool or review, {self.joined} from the pending pool into a person",
                 f"  persons: {len(self.created)} new, {len(self.dissolved)} dissolved (empty)",
                 f"  Telegram: {self.deleted_posts} posted message(s) to delete, "
                 f"{self.cancelled_posts} unsent post(s) cancelled, {self.due_posts} post(s) due"]
        lines += [f"  {line}" for line in self.persons]
        return "\n".join(lines)


def recluster(conn: psycopg.Connection, params: MatchParams, *, dry_run: bool = False) -> Report:
    """Re-decide every automatic assignment; see the module docstring. `conn` is a sync
    connection (its own transaction is used, a savepoint if one is open)."""
    from pgvector.psycopg import register_vector

    register_vector(conn)
    report = Report(dry_run)
    start = time.perf_counter()
    try:
        with conn.transaction() as tx:
            conn.execute(queries.persons_lock, {"key": PERSONS_LOCK})
            conn.execute(queries.recluster_lock_persons)
            faces = _load(conn)
            placements = replay(faces, Thresholds.from_match(params))
            _write(conn, faces, placements, report)
            report.seconds = time.perf_counter() - start
            if dry_run:
                raise psycopg.Rollback(tx)
    finally:
        report.seconds = report.seconds or time.perf_counter() - start
    return report


def _load(conn: psycopg.Connection) -> list[StoredFace]:
    faces = []
    for (face_id, media, track, low, embedding, person, state, fixed,
         rejected) in conn.execute(queries.recluster_faces):
        v = embedding.to_numpy().astype("float32")
        faces.append(StoredFace(face_id, media, track, bool(low), v, person if state == "assigned"
                                else None, state, bool(fixed), frozenset(rejected or ())))
    return faces


def _write(conn: psycopg.Connection, faces: list[StoredFace], placements: dict[int, Placement],
           report: Report) -> None:
    changed = [(f, placements[f.face_id]) for f in faces if not f.fixed]
    report.faces = len(changed)
    new_ids: dict[int, int] = {}
    for _, p in changed:
        if p.person is not None and p.person < 0 and p.person not in new_ids:
            new_ids[p.person] = conn.execute(queries.persons_create).fetchone()[0]
    report.created = sorted(new_ids.values())
    rows = []
    lost: dict[int, set[int]] = defaultdict(set)       # person -> media items a face left
    gained: dict[int, set[int]] = defaultdict(set)
    flows: dict[int, Counter] = defaultdict(Counter)   # old person -> {new place: faces}
    into: dict[int, Counter] = defaultdict(Counter)    # new place -> {old person: faces}
    for f, p in changed:
        person = new_ids.get(p.person, p.person)
        if (f.state, f.person_id) == (p.state, person):
            report.unchanged += 1
            continue
        rows.append((f.face_id, person, p.state, p.assigned_by if p.state == "assigned" else None,
                     p.similarity, Jsonb([asdict(c) for c in p.candidates])
                     if p.state == "review" else None))
        if f.person_id is not None:
            report.moved += person is not None
            report.left += person is None
            if f.media_item_id is not None:
                lost[f.person_id].add(f.media_item_id)
        else:
            report.joined += person is not None
        if person is not None and f.media_item_id is not None:
            gained[person].add(f.media_item_id)
        flows[f.person_id][person if person is not None else p.state] += 1
        into[person][f.person_id] += 1
    if rows:
        ids, persons_, states, by, sims, cands = (list(c) for c in zip(*rows))
        conn.execute(queries.recluster_place, {
            "face_ids": ids, "person_ids": persons_, "states": states, "assigned_by": by,
            "similarities": sims, "candidates": cands})
    before = _cancelled(conn)
    for person in sorted(lost):
        posted = [r[0] for r in conn.execute(queries.persons_withdraw_posts, {
            "person_id": person, "media_item_ids": sorted(lost[person])}).fetchall()]
        if posted:
            conn.execute(queries.persons_record_action, {"action": "delete_posts", "payload": Jsonb(
                {"person_id": person, "uploaded_media_ids": posted})})
            report.deleted_posts += len(posted)
    report.cancelled_posts = _cancelled(conn) - before
    for person in sorted(gained):
        report.due_posts += len(conn.execute(queries.persons_insert_due, {
            "person_id": person, "media_item_ids": sorted(gained[person])}).fetchall())
    touched = sorted(set(lost) | set(gained))
    for person in touched:
        conn.execute(queries.persons_refresh, {"person_id": person})
    for person in sorted(set(lost) - set(gained)):
        if conn.execute(queries.persons_dissolve_if_empty, {"person_id": person}).fetchone():
            report.dissolved.append(person)
    report.persons = _person_lines(conn, flows, into, set(report.created), set(report.dissolved))


def _cancelled(conn: psycopg.Connection) -> int:
    return conn.execute(queries.recluster_cancelled_count).fetchone()[0]


def _person_lines(conn, flows, into, created: set[int], dissolved: set[int]) -> list[str]:
    """One line per person whose faces changed, most changed first."""
    labels = dict(conn.execute(queries.recluster_persons).fetchall())

    def name(p) -> str:
        if p in ("pending", "review"):
            return f"the {p} pool" if p == "pending" else "review"
        if p is None:
            return "the pending pool"
        tag = " (new)" if p in created else " (dissolved)" if p in dissolved else ""
        return f"#{p} «{labels.get(p, f'Person {p}')}»{tag}"

    changed = {p for p in flows if p is not None} | {p for p in into if p is not None}
    weight = {p: sum(flows.get(p, Counter()).values()) + sum(into.get(p, Counter()).values())
              for p in changed}
    lines = []
    for p in sorted(changed, key=lambda p: (-weight[p], p))[:PER_PERSON_LINES]:
        parts = []
        out = flows.get(p)
        if out:
            parts.append(f"{sum(out.values())} out (" + ", ".join(
                f"{n} to {name(q)}" for q, n in out.most_common()) + ")")
        came = into.get(p)
        if came:
            parts.append(f"{sum(came.values())} in (" + ", ".join(
                f"{n} from {name(q)}" for q, n in came.most_common()) + ")")
        lines.append(f"{name(p)}: " + "; ".join(parts))
    if len(changed) > PER_PERSON_LINES:
        lines.append(f"… and {len(changed) - PER_PERSON_LINES} more persons")
    return lines
