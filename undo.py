"""Undoing the operator's merges, moves and dismissals (persons.py), from the audit log.

    result, record = capture(conn, action, fn, *args)   # the correction, and what undoes it
    summary = undo(conn, record)                        # back, or UndoRefused saying why not

A correction touches few rows: the faces it moves, the persons they leave and join (and those
merged into them), their "not this person" facts, merge suggestions and posts. `capture` reads
those rows before and after the correction and keeps the rows that changed, with both versions
(the dashboard stores this in the correction's audit entry, `details["undo"]`).

`undo` is safe only while nothing since has changed what the correction changed: every face it
moved is still where it put it, no person it touched has been merged away or deleted, what it
changed about a person (name, hidden, cover) and a suggestion's answer are as it left them.
Otherwise it refuses, naming what changed (undo the later change first). Faces the matcher put
into its persons since (a merged person grows with both people's faces) are decided again
between the persons the undo leaves, by the matcher's own rule, and the operator is told where
they went; faces the operator placed since stay where they are (`_rehome_later_faces`).

What Telegram must be told follows from the requests (`dashboard_actions`) the correction made:
- not applied yet: deleted, Telegram never hears of them (a request the daemon is applying at
  this moment makes the undo wait: UndoRefused, try again);
- applied: answered — a rename with a rename back, a merge's closed topic reopened under its own
  name, deleted posts due again (posted anew), a cover change with the cover restored;
- posts the correction made due and the daemon has posted since are deleted (``delete_posts``);
  those still due are simply dropped.
A person the correction made is deleted again (or, if its topic exists by now, left empty and
hidden, which closes its topic); a person it dissolved comes back with its id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb

from database import queries
from identity_matcher import PERSONS_LOCK

logger = logging.getLogger(__name__)

T = TypeVar("T")

# What a correction may change about a person (the rest is the daemon's or persons_refresh's).
PERSON_FIELDS = ("label", "label_is_manual", "hidden", "merged_into", "cover_face_id", "cover_is_manual")


class UndoRefused(Exception):
    """The change cannot be undone (now, or at all); the message says why, to the operator."""


@dataclass
class Scope:
    """The rows a correction may touch, named before it runs."""
    persons: set[int] = field(default_factory=set)
    faces: set[int] = field(default_factory=set)
    suggestions: set[int] = field(default_factory=set)


def _ids(value: Any) -> set[int]:
    return {int(v) for v in value} if isinstance(value, (list, tuple, set)) else set()


def _face_scope(conn: psycopg.Connection, face_ids: Any, *persons: Any) -> Scope:
    faces = _ids(face_ids)
    found = {r[0] for r in conn.execute(queries.undo_face_persons, {"face_ids": sorted(faces)})}
    return Scope(persons=found | {int(p) for p in persons if p is not None}, faces=faces)


def _suggestion_scope(conn: psycopg.Connection, suggestion_ids: set[int]) -> Scope:
    rows = conn.execute(queries.undo_suggestion_persons, {"suggestion_ids": sorted(suggestion_ids)})
    return Scope(persons={p for r in rows for p in r}, suggestions=suggestion_ids)


def _review_scope(conn: psycopg.Connection, face_id: int, person_id: int | None = None) -> Scope:
    unit = [r[0] for r in conn.execute(queries.persons_review_unit, {"face_id": face_id})]
    return _face_scope(conn, unit or [face_id], person_id)


# The corrections that can be undone, by name (persons.py and the dashboard's compositions of
# it, which keep persons.py's arguments first), and the rows each may touch.
SCOPES: dict[str, Callable[..., Scope]] = {
    "merge_persons": lambda conn, survivor, absorbed, suggestion=None: Scope(
        persons={survivor, absorbed}, suggestions={suggestion} if suggestion else set()),
    "accept_merge_suggestion": lambda conn, suggestion, survivor=None: _suggestion_scope(conn, {suggestion}),
    "move_faces": lambda conn, face_ids, person_id: _face_scope(conn, face_ids, person_id),
    "move_faces_to_new_person": lambda conn, face_ids, label="": _face_scope(conn, face_ids),
    "unassign_faces": lambda conn, face_ids: _face_scope(conn, face_ids),
    "dismiss_faces": lambda conn, face_ids: _face_scope(conn, face_ids),
    "resolve_review": _review_scope,
    "split_person": lambda conn, person_id, groups: _face_scope(conn, [f for g in groups for f in g], person_id),
    "reject_merge_suggestion": lambda conn, suggestion: _suggestion_scope(conn, {suggestion}),
    "reject_suggestions": lambda conn, suggestion_ids: _suggestion_scope(conn, _ids(suggestion_ids)),
}


def undoable(action: str) -> bool:
    return action in SCOPES


# --- capture -----------------------------------------------------------------------------------


def _snapshot(conn: psycopg.Connection, scope: Scope) -> dict[str, dict[str, Any]]:
    """{table: {key: row as JSON}} of the rows in `scope` (keys as text: they go into JSON)."""
    p = {"person_ids": sorted(scope.persons), "face_ids": sorted(scope.faces),
         "suggestion_ids": sorted(scope.suggestions)}
    return {
        "persons": {str(r[0]): r[1] for r in conn.execute(queries.undo_snap_persons, p)},
        "faces": {str(r[0]): r[1] for r in conn.execute(queries.undo_snap_faces, p)},
        "rejections": {f"{r[0]}:{r[1]}": r[2] for r in conn.execute(queries.undo_snap_rejections, p)},
        "suggestions": {str(r[0]): r[1] for r in conn.execute(queries.undo_snap_suggestions, p)},
        "uploads": {str(r[0]): r[1] for r in conn.execute(queries.undo_snap_uploads, p)},
    }


def _diff(before: dict[str, dict], after: dict[str, dict]) -> dict[str, list]:
    """{table: [[key, row before or None, row after or None], …]} of the rows that changed."""
    changed: dict[str, list] = {}
    for table in before:
        old, new = before[table], after[table]
        keys = sorted(set(old) | set(new))
        if table == "faces":   # faces are never made or deleted by a correction
            keys = [k for k in keys if k in old and k in new]
        changed[table] = [[k, old.get(k), new.get(k)] for k in keys if old.get(k) != new.get(k)]
    return changed


def capture(conn: psycopg.Connection, action: str, fn: Callable[..., T], *args: Any) -> tuple[T, dict[str, Any]]:
    """Run the correction `fn(conn, *args)` (named `action`, one of SCOPES) in `conn`'s
    transaction; return its result and what undoing it needs (JSON-able)."""
    scope = SCOPES[action](conn, *args)
    before = _snapshot(conn, scope)
    first_action = conn.execute(queries.undo_last_action).fetchone()[0]
    result = fn(conn, *args)
    # The persons it may have made: where its faces are now, and what it returned.
    made = {r[0] for r in conn.execute(queries.undo_face_persons, {"face_ids": sorted(scope.faces)})}
    if isinstance(result, int) and not isinstance(result, bool):
        made.add(result)
    after = _snapshot(conn, Scope(scope.persons | made, scope.faces | {int(k) for k in before["faces"]},
                                  scope.suggestions))
    record = _diff(before, after)
    # The faces its persons hold right after it: those that join them later are not its (undo
    # re-decides them, _rehome_later_faces).
    record["members"] = sorted(int(k) for k, row in after["faces"].items() if row["topic_id"] is not None)
    record["actions"] = [r[0] for r in conn.execute(queries.undo_actions_recorded, {"after_id": first_action})]
    return result, record


# --- undo --------------------------------------------------------------------------------------


def _label(row: dict[str, Any] | None, person: int) -> str:
    return f"«{row['label']}»" if row else f"person #{person}"


def _check(conn: psycopg.Connection, record: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Lock what the undo writes; refuse if a later change touched it. Returns the persons now."""
    persons = sorted({int(k) for k, _, _ in record["persons"]}
                     | {int(b["topic_id"]) for _, b, _ in record["faces"] if b and b["topic_id"]})
    conn.execute(queries.persons_lock, {"key": PERSONS_LOCK})
    now = {r[0]: r[1] for r in conn.execute(queries.undo_lock_persons, {"person_ids": persons})}
    problems: list[str] = []
    for key, before, after in record["persons"]:
        person = int(key)
        if after is None:
            continue   # dissolved by the change: comes back
        current = now.get(person)
        if current is None:
            problems.append(f"{_label(after, person)} no longer exists")
        elif current["merged_into"] != after["merged_into"]:
            problems.append(f"{_label(after, person)} has been merged since")
        elif before is not None:
            fields = [f for f in PERSON_FIELDS if before[f] != after[f] and current[f] != after[f]]
            if fields:
                problems.append(f"{_label(after, person)} has changed since ({', '.join(fields)})")
    faces = {r[0]: r for r in conn.execute(queries.undo_lock_faces, {
        "face_ids": [int(k) for k, _, _ in record["faces"]]})}
    for key, _, after in record["faces"]:
        face = faces.get(int(key))
        if face is None or (face[1], face[2]) != (after["topic_id"], after["state"]):
            problems.append(f"face #{key} has moved since")
    changed = [(int(k), a) for k, b, a in record["suggestions"] if b is not None and a is not None]
    statuses = dict(conn.execute(queries.undo_lock_suggestions, {"suggestion_ids": [k for k, _ in changed]}).fetchall())
    for suggestion, after in changed:
        if suggestion in statuses and statuses[suggestion] != after["status"]:
            problems.append(f"suggestion #{suggestion} has been answered again since")
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise UndoRefused(f"later changes touched what this one changed: {shown}. Undo those first.")
    return now


def _withdraw_requests(conn: psycopg.Connection, action_ids: list[int]) -> list[int]:
    """Delete the requests of `action_ids` not applied yet; refuse if the daemon is applying one
    (it holds the row until it is done) for longer than a moment."""
    previous = conn.execute(queries.undo_lock_timeout, {"timeout": "3s"}).fetchone()[0]
    try:
        withdrawn = [r[0] for r in conn.execute(queries.undo_drop_actions, {"action_ids": action_ids})]
    except psycopg.errors.LockNotAvailable:
        raise UndoRefused("Telegram is being told about this change at this very moment; "
                          "try again in a few seconds.") from None
    conn.execute(queries.undo_lock_timeout, {"timeout": previous})
    return withdrawn


def undo(conn: psycopg.Connection, record: dict[str, Any]) -> dict[str, Any]:
    """Undo the correction `record` (from `capture`) in `conn`'s transaction; return what was
    done for Telegram: {"withdrawn": request ids deleted, "requested": new requests}."""
    with conn.transaction():
        now = _check(conn, record)
        withdrawn = _withdraw_requests(conn, record["actions"])
        actions = {r[0]: r for r in conn.execute(queries.undo_applied_actions, {"action_ids": record["actions"]})}
        uploads = {r[0]: r[1] for r in conn.execute(queries.undo_lock_uploads, {
            "upload_ids": [int(k) for k, _, _ in record["uploads"]]})}
        if any(uploads.get(int(k), {}).get("status") == "sending" for k, _, _ in record["uploads"]):
            raise UndoRefused("a post this change made due is being sent right now; try again in a few seconds.")

        def rows(table: str, which: Callable[[Any, Any], bool], side: int) -> list[dict]:
            return [entry[side] for entry in record[table] if which(entry[1], entry[2])]

        gone = lambda b, a: b is not None and a is None      # noqa: E731 (deleted by the change)
        made = lambda b, a: b is None and a is not None      # noqa: E731 (made by the change)
        changed = lambda b, a: b is not None and a is not None  # noqa: E731
        requested: list[tuple[str, dict]] = []

        # Persons first (faces and posts refer to them), then faces, facts and suggestions.
        if rows("persons", gone, 1):
            conn.execute(queries.undo_insert_persons, {"rows": Jsonb(rows("persons", gone, 1))})
        # Only what the change changed goes back: a later rename of the survivor of a merge stays.
        people = []
        for key, before, after in record["persons"]:
            if changed(before, after):
                people.append(now[int(key)] | {f: before[f] for f in PERSON_FIELDS if before[f] != after[f]})
        conn.execute(queries.undo_restore_persons, {"rows": Jsonb(people)})
        conn.execute(queries.undo_restore_faces, {"rows": Jsonb(rows("faces", changed, 1))})
        conn.execute(queries.undo_delete_rejections, {"rows": Jsonb(rows("rejections", made, 2))})
        conn.execute(queries.undo_insert_rejections, {"rows": Jsonb(rows("rejections", gone, 1))})
        conn.execute(queries.undo_insert_suggestions, {"rows": Jsonb(rows("suggestions", gone, 1))})
        conn.execute(queries.undo_restore_suggestions, {"rows": Jsonb(rows("suggestions", changed, 1))})

        # Posts: what the change made due and the daemon posted since comes off Telegram; the
        # rest goes back to what it was.
        withdraw: dict[int, list[int]] = {}
        restore, drop = [], []
        for key, before, after in record["uploads"]:
            current = uploads.get(int(key))
            if before is None:
                if current is None:
                    continue
                if current["status"] == "posted":
                    withdraw.setdefault(current["topic_id"], []).append(current["id"])
                else:
                    drop.append(current["id"])
            elif after is None:
                conn.execute(queries.undo_insert_uploads, {"rows": Jsonb([before])})
            elif current is not None and current["status"] != "posted":
                restore.append(before)
            elif current is not None and before["status"] != "posted":
                withdraw.setdefault(current["topic_id"], []).append(current["id"])
        conn.execute(queries.undo_restore_uploads, {"rows": Jsonb(restore)})
        conn.execute(queries.undo_cancel_uploads, {"upload_ids": drop})
        later = _rehome_later_faces(conn, record, withdraw)

        # Telegram: requests not applied yet are withdrawn, applied ones answered.
        restored = {r[0]: r[1] for r in conn.execute(queries.undo_lock_persons, {
            "person_ids": sorted({int(k) for k, _, _ in record["persons"]})})}
        for _, kind, payload, status in actions.values():
            if status != "done":
                continue
            if kind == "rename_topic" and payload.get("person_id") in restored:
                requested.append(("rename_topic", {"person_id": payload["person_id"],
                                                   "title": restored[payload["person_id"]]["label"]}))
            elif kind == "merge_persons" and payload.get("absorbed_id") in restored:
                absorbed = restored[payload["absorbed_id"]]
                requested.append(("rename_topic", {"person_id": absorbed["id"], "title": absorbed["label"]}))
                if not absorbed["hidden"]:
                    requested.append(("unhide_person", {"person_id": absorbed["id"]}))
            elif kind == "delete_posts":
                conn.execute(queries.undo_due_again, {"upload_ids": payload.get("uploaded_media_ids") or []})
            elif kind == "update_cover" and payload.get("person_id") in restored:
                requested.append(("update_cover", {"person_id": payload["person_id"],
                                                   "face_id": restored[payload["person_id"]]["cover_face_id"]}))
        for person, ids in sorted(withdraw.items()):
            requested.append(("delete_posts", {"person_id": person, "uploaded_media_ids": sorted(ids)}))

        # A person the change made goes again (emptied by now); one with a topic stays, hidden.
        for key, _, _ in (e for e in record["persons"] if made(e[1], e[2])):
            if conn.execute(queries.undo_drop_person, {"person_id": int(key)}).fetchone() is None:
                if conn.execute(queries.undo_hide_person, {"person_id": int(key)}).fetchone():
                    requested.append(("hide_person", {"person_id": int(key)}))
        for person in sorted({int(k) for k, _, _ in record["persons"]}):
            conn.execute(queries.persons_refresh, {"person_id": person})
        new_ids = [conn.execute(queries.persons_record_action, {"action": kind, "payload": Jsonb(payload)}).fetchone()[0]
                   for kind, payload in requested]
    logger.info("undid a correction: %d request(s) for Telegram withdrawn, %d made", len(withdrawn), len(new_ids))
    return {"withdrawn": withdrawn, "requested": new_ids} | later


def _rehome_later_faces(conn: psycopg.Connection, record: dict[str, Any],
                        withdraw: dict[int, list[int]]) -> dict[str, Any]:
    """The faces the matcher put into the change's persons after it (a merged person grows with
    faces of both people): not the change's, so not simply left where it put them. Each is decided
    again between the persons the undo leaves, by the matcher's rule (average linkage: it goes to
    the one whose faces it is most like as a whole); one in a person the undo removes, with no
    person left to go to, waits in the pending pool. Faces the operator placed since stay: facts.
    Their posts follow them (`withdraw` gets the posted ones to delete). Returns
    {"later_faces": [[face, from, to], …], "later_note": what the operator is told}."""
    if "members" not in record:   # recorded before the undo knew a change's faces
        return {}
    touched = sorted({int(k) for k, _, _ in record["persons"]})
    made = {int(k) for k, b, a in record["persons"] if b is None and a is not None}
    now = {r[0]: r[1] for r in conn.execute(queries.undo_lock_persons, {"person_ids": touched})}
    candidates = sorted(p for p, row in now.items() if row["merged_into"] is None and p not in made)
    moves: list[tuple[int, int, int | None, int | None, float | None]] = []
    for face, person, media, best, similarity in conn.execute(queries.undo_later_faces, {
            "person_ids": touched, "members": record["members"], "candidate_ids": candidates}).fetchall():
        target = best if best is not None else (None if person in made else person)
        if target != person:
            moves.append((face, person, target, media, similarity if target is not None else None))
    if not moves:
        return {}
    conn.execute(queries.undo_rehome_faces, {"face_ids": [m[0] for m in moves], "person_ids": [m[2] for m in moves],
                                             "similarities": [m[4] for m in moves]})
    for person in sorted({m[1] for m in moves}):
        media = sorted({m[3] for m in moves if m[1] == person and m[3] is not None})
        posted = [r[0] for r in conn.execute(queries.persons_withdraw_posts, {"person_id": person,
                                                                              "media_item_ids": media})]
        withdraw.setdefault(person, []).extend(posted)
    for person in sorted({m[2] for m in moves if m[2] is not None}):
        conn.execute(queries.persons_insert_due, {"person_id": person, "media_item_ids": sorted(
            {m[3] for m in moves if m[2] == person and m[3] is not None})})
    went = [(to, sum(1 for m in moves if m[2] == to)) for to in dict.fromkeys(m[2] for m in moves)]
    note = "; ".join(f"{n} face{'s' if n > 1 else ''} that joined since "
                     + (f"went to {_label(now.get(to), to)}, whose faces {'they are' if n > 1 else 'it is'} more like"
                        if to is not None else f"wait{'' if n > 1 else 's'} in the pending pool") for to, n in went)
    return {"later_faces": [[m[0], m[1], m[2]] for m in moves], "later_note": note[0].upper() + note[1:] + "."}
