"""The operator's corrections to persons: facts that the matcher respects from then on.

The dashboard (sync Streamlit, `database.sync_pool`) calls these functions with a connection
from its pool; each runs in its own transaction (a savepoint if the caller already has one) and
is synchronous, because the daemon never corrects anything. Corrections that touch faces take
the same advisory lock as the matcher's person creation (identity_matcher.PERSONS_LOCK), so they
never interleave with a worker seeding or re-deciding pending faces; joins of single faces are
kept out by a row lock on the person (`persons_claim`).

What each correction means, and what it leaves for the daemon to do on Telegram: a row in
`dashboard_actions` (status 'pending'); the daemon applies it, and sets it 'done' or 'failed'.
Every payload names persons by id; the applier reads their current topic ids, because a topic
may be created (or recreated) after the action was recorded. A person without a topic needs
nothing on Telegram: its topic will be created with the current label and cover.

- `rename_person` -> ``rename_topic {"person_id", "title"}``: EditForumTopic to the title (the
  person's label, at most 128 UTF-8 bytes). The person is named (label_is_manual) and is never
  dissolved.
- `merge_persons(survivor, absorbed)` -> ``merge_persons {"survivor_id", "absorbed_id",
  "title", "note"}``: the absorbed person's topic gets `note` as a last message ("Merged into
  <survivor>: its posts continue there."), is renamed to `title` ("→ merged into <survivor>")
  and closed. Its faces, the operator's "not this person" facts about it and its open
  suggestions move to the survivor; it keeps its row with merged_into = survivor, so matching
  and review candidates follow it to the survivor for good (merges stay merged). Its posts not
  sent yet are cancelled; every media item it had posted or due becomes due in the survivor's
  topic (new uploaded_media rows; the unique (topic_id, media_item_id) keeps that to one post
  each, so what the survivor already has is not posted again). Nothing is deleted on Telegram.
  An unnamed survivor takes the absorbed person's name (and gets a ``rename_topic`` too).
- `hide_person` -> ``hide_person {"person_id"}``: close the topic. Posts not sent yet are
  cancelled and no new ones become due; faces still join the person, so it is not born again.
  `unhide_person` -> ``unhide_person {"person_id"}``: reopen the topic; what was cancelled by
  hiding, and the media of faces that joined while hidden, become due.
- `move_faces`, `move_faces_to_new_person`, `unassign_faces`, `dismiss_faces`,
  `resolve_review`: a face leaving person P is recorded in face_rejections ("not P"): the matcher
  never puts it back into P, and a new face that looks more like it than like P goes to review.
  If P has no face left in that media item, P's post of it is withdrawn: cancelled if not sent,
  else ``delete_posts {"person_id", "uploaded_media_ids"}``: delete those posted messages
  from P's topic (a row still 'sending' when the action runs: wait for it) and set the rows
  'cancelled'. An unnamed person left with no face, no topic and no post is deleted (named ones
  stay, empty, until the operator decides).
- `choose_cover` -> ``update_cover {"person_id", "face_id"}``: optional on Telegram (the topic's
  first post is the cover crop; an applier may edit that message's photo). The dashboard tile
  uses the chosen face; a face added later never replaces it; None returns to the automatic
  cover (the best-quality face).
- `accept_merge_suggestion` merges (survivor: the one given, else the named one, else the one
  with a topic, else the one with more faces); `reject_merge_suggestion` records the answer, so
  that pair is never offered again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import psycopg
from psycopg.types.json import Jsonb

from database import queries
from identity_matcher import PERSONS_LOCK

logger = logging.getLogger(__name__)

TITLE_MAX_BYTES = 128  # Telegram's limit for a forum topic title
HIDDEN_REASON = "person hidden"


class CorrectionError(ValueError):
    """The correction cannot be made as asked (unknown or merged person, unknown face, …)."""


# --- persons -----------------------------------------------------------------------------------


def rename_person(conn: psycopg.Connection, person_id: int, label: str) -> None:
    """Name a person; its topic is renamed on Telegram."""
    label = " ".join(label.split())
    if not label:
        raise CorrectionError("a person's name cannot be empty")
    if len(label.encode("utf-8")) > TITLE_MAX_BYTES:
        raise CorrectionError(f"a person's name is a topic title: at most {TITLE_MAX_BYTES} "
                              f"bytes of UTF-8 (this one has {len(label.encode('utf-8'))})")
    with conn.transaction():
        _active(_lock_persons(conn, [person_id]), person_id)
        conn.execute(queries.persons_rename, {"person_id": person_id, "label": label})
        _action(conn, "rename_topic", person_id=person_id, title=label)


def merge_persons(conn: psycopg.Connection, survivor_id: int, absorbed_id: int) -> None:
    """Merge `absorbed_id` into `survivor_id`, for good; see the module docstring."""
    if survivor_id == absorbed_id:
        raise CorrectionError("a person cannot be merged into itself")
    with conn.transaction():
        _lock_faces(conn)
        rows = _lock_persons(conn, [survivor_id, absorbed_id])
        survivor, absorbed = _active(rows, survivor_id), _active(rows, absorbed_id)
        conn.execute(queries.persons_move_all_faces,
                     {"survivor_id": survivor_id, "absorbed_id": absorbed_id})
        conn.execute(queries.persons_carry_rejections,
                     {"survivor_id": survivor_id, "absorbed_id": absorbed_id})
        media = [r[0] for r in conn.execute(queries.persons_post_media,
                                            {"person_id": absorbed_id}).fetchall()]
        media += [r[0] for r in conn.execute(queries.persons_face_media,
                                             {"person_id": survivor_id}).fetchall()]
        conn.execute(queries.persons_cancel_due, {
            "person_id": absorbed_id, "reason": f"person merged into {survivor_id}"})
        conn.execute(queries.persons_absorb, {"survivor_id": survivor_id, "absorbed_id": absorbed_id})
        _due(conn, survivor_id, media)
        taken = conn.execute(queries.persons_take_label,
                             {"survivor_id": survivor_id, "absorbed_id": absorbed_id}).fetchone()
        label = taken[0] if taken else survivor[1]
        if taken:
            _action(conn, "rename_topic", person_id=survivor_id, title=label)
        conn.execute(queries.persons_settle_suggestions,
                     {"survivor_id": survivor_id, "absorbed_id": absorbed_id})
        _action(conn, "merge_persons", survivor_id=survivor_id, absorbed_id=absorbed_id,
                title=_title(f"→ merged into {label}"),
                note=f"Merged into {label}: its posts continue there.")
        _refresh(conn, [survivor_id, absorbed_id])
    logger.info("merged person %d (%s) into %d (%s)", absorbed_id, absorbed[1], survivor_id, label)


def hide_person(conn: psycopg.Connection, person_id: int) -> None:
    """No more posts for this person and no gallery tile; its topic is closed."""
    with conn.transaction():
        _active(_lock_persons(conn, [person_id]), person_id)
        conn.execute(queries.persons_set_hidden, {"person_id": person_id, "hidden": True})
        conn.execute(queries.persons_cancel_due, {"person_id": person_id, "reason": HIDDEN_REASON})
        _action(conn, "hide_person", person_id=person_id)


def unhide_person(conn: psycopg.Connection, person_id: int) -> None:
    """Undo `hide_person`: the topic reopens and what was held back becomes due."""
    with conn.transaction():
        _active(_lock_persons(conn, [person_id]), person_id)
        conn.execute(queries.persons_set_hidden, {"person_id": person_id, "hidden": False})
        conn.execute(queries.persons_resume_posts, {"person_id": person_id, "reason": HIDDEN_REASON})
        _due(conn, person_id, [r[0] for r in conn.execute(
            queries.persons_face_media, {"person_id": person_id}).fetchall()])
        _action(conn, "unhide_person", person_id=person_id)


def choose_cover(conn: psycopg.Connection, person_id: int, face_id: int | None) -> None:
    """Make `face_id` (one of the person's faces) its cover; None: back to the best face."""
    with conn.transaction():
        _active(_lock_persons(conn, [person_id]), person_id)
        if face_id is not None:
            faces = conn.execute(queries.persons_faces_for_update, {"face_ids": [face_id]}).fetchall()
            if not faces or faces[0][1] != person_id:
                raise CorrectionError(f"face {face_id} is not a face of person {person_id}")
        conn.execute(queries.persons_set_cover, {"person_id": person_id, "face_id": face_id})
        _refresh(conn, [person_id])
        _action(conn, "update_cover", person_id=person_id, face_id=face_id)


# --- faces -------------------------------------------------------------------------------------


def move_faces(conn: psycopg.Connection, face_ids: Iterable[int], person_id: int) -> None:
    """Put faces into `person_id` (followed if it was merged): "this is that person"."""
    with conn.transaction():
        _lock_faces(conn)
        target = _resolve(conn, person_id)
        _place(conn, list(face_ids), target, "assigned")


def move_faces_to_new_person(conn: psycopg.Connection, face_ids: Iterable[int]) -> int:
    """Make a new person of these faces (a split); return its id."""
    with conn.transaction():
        _lock_faces(conn)
        target = conn.execute(queries.persons_create).fetchone()[0]
        _place(conn, list(face_ids), target, "assigned")
    return target


def unassign_faces(conn: psycopg.Connection, face_ids: Iterable[int]) -> None:
    """"Not this person": the faces leave their person for the pending pool, where the matcher
    may place them elsewhere, never back."""
    with conn.transaction():
        _lock_faces(conn)
        _place(conn, list(face_ids), None, "pending")


def dismiss_faces(conn: psycopg.Connection, face_ids: Iterable[int]) -> None:
    """Not a usable face (or nobody to follow): out of any person, and ignored by matching."""
    with conn.transaction():
        _lock_faces(conn)
        _place(conn, list(face_ids), None, "dismissed")


def resolve_review(conn: psycopg.Connection, face_id: int, person_id: int | None) -> None:
    """Answer a face in review (with the rest of its video track): it is `person_id`, or, with
    None, nobody to follow (dismissed). For a new person use `move_faces_to_new_person`."""
    with conn.transaction():
        _lock_faces(conn)
        unit = [r[0] for r in conn.execute(queries.persons_review_unit, {"face_id": face_id})]
        if not unit:
            raise CorrectionError(f"face {face_id} does not exist")
        if person_id is None:
            _place(conn, unit, None, "dismissed")
        else:
            _place(conn, unit, _resolve(conn, person_id), "assigned")


# --- merge suggestions -------------------------------------------------------------------------


def accept_merge_suggestion(conn: psycopg.Connection, suggestion_id: int,
                            survivor_id: int | None = None) -> int:
    """Merge the suggested pair; return the survivor."""
    with conn.transaction():
        _lock_faces(conn)  # before any row lock, as everywhere
        a, b = _open_suggestion(conn, suggestion_id)
        if survivor_id is None:
            rows = {r[0]: r for r in _lock_persons(conn, [a, b])}
            # named first, then the one with a topic, then more faces, then the older
            survivor_id = max((a, b), key=lambda p: (rows[p][2], rows[p][5] is not None,
                                                     rows[p][6] or 0, -p))
        elif survivor_id not in (a, b):
            raise CorrectionError(f"person {survivor_id} is not part of suggestion {suggestion_id}")
        merge_persons(conn, survivor_id, b if survivor_id == a else a)
    return survivor_id


def reject_merge_suggestion(conn: psycopg.Connection, suggestion_id: int) -> None:
    """"Not the same person": the pair is never offered again."""
    with conn.transaction():
        _open_suggestion(conn, suggestion_id)
        conn.execute(queries.persons_decide_suggestion,
                     {"suggestion_id": suggestion_id, "status": "rejected"})


# --- internals ---------------------------------------------------------------------------------


def _lock_faces(conn: psycopg.Connection) -> None:
    conn.execute(queries.persons_lock, {"key": PERSONS_LOCK})


def _lock_persons(conn: psycopg.Connection, person_ids: list[int]) -> list[tuple]:
    return conn.execute(queries.persons_lock_rows, {"person_ids": sorted(set(person_ids))}).fetchall()


def _active(rows: list[tuple], person_id: int) -> tuple:
    row = next((r for r in rows if r[0] == person_id), None)
    if row is None:
        raise CorrectionError(f"person {person_id} does not exist")
    if row[4] is not None:
        raise CorrectionError(f"person {person_id} was merged into person {row[4]}; "
                              f"correct that one instead")
    return row


def _resolve(conn: psycopg.Connection, person_id: int) -> int:
    """The person itself, or the survivor it was merged into (`_place` locks it, in id order
    with the others: a lock taken here first could deadlock with a worker's claims)."""
    row = conn.execute(queries.persons_merged_into, {"person_id": person_id}).fetchone()
    if row is None:
        raise CorrectionError(f"person {person_id} does not exist")
    return row[0]


def _place(conn: psycopg.Connection, face_ids: list[int], target: int | None, state: str) -> None:
    """Move faces into `target` (state 'assigned') or out of any person ('pending'/'dismissed'):
    rejections, posts withdrawn and due, persons refreshed or dissolved."""
    faces = conn.execute(queries.persons_faces_for_update, {"face_ids": face_ids}).fetchall()
    missing = set(face_ids) - {f[0] for f in faces}
    if missing:
        raise CorrectionError(f"no such faces: {sorted(missing)}")
    leaving = [(f[0], f[1]) for f in faces if f[1] is not None and f[1] != target]
    old_persons = sorted({p for _, p in leaving})
    _lock_persons(conn, old_persons + ([target] if target else []))
    if leaving:
        conn.execute(queries.persons_reject, {"face_ids": [f for f, _ in leaving],
                                              "person_ids": [p for _, p in leaving]})
    if target is not None:
        conn.execute(queries.persons_unreject, {"person_id": target, "face_ids": face_ids})
    conn.execute(queries.persons_place_faces, {"face_ids": face_ids, "person_id": target,
                                               "state": state})
    for person in old_persons:
        media = sorted({f[3] for f in faces if f[1] == person and f[3] is not None})
        posted = [r[0] for r in conn.execute(queries.persons_withdraw_posts, {
            "person_id": person, "media_item_ids": media}).fetchall()]
        if posted:
            _action(conn, "delete_posts", person_id=person, uploaded_media_ids=posted)
    if target is not None:
        _due(conn, target, [f[3] for f in faces if f[3] is not None])
    _refresh(conn, old_persons + ([target] if target else []))
    for person in old_persons:
        if conn.execute(queries.persons_dissolve_if_empty, {"person_id": person}).fetchone():
            logger.info("person %d had nothing left and was dissolved", person)


def _due(conn: psycopg.Connection, person_id: int, media_item_ids: list[int]) -> None:
    if media_item_ids:
        conn.execute(queries.persons_insert_due, {"person_id": person_id,
                                                  "media_item_ids": sorted(set(media_item_ids))})


def _refresh(conn: psycopg.Connection, person_ids: list[int]) -> None:
    for person_id in sorted(set(person_ids)):
        conn.execute(queries.persons_refresh, {"person_id": person_id})


def _open_suggestion(conn: psycopg.Connection, suggestion_id: int) -> tuple[int, int]:
    row = conn.execute(queries.persons_suggestion_for_update,
                       {"suggestion_id": suggestion_id}).fetchone()
    if row is None:
        raise CorrectionError(f"merge suggestion {suggestion_id} does not exist")
    if row[3] != "open":
        raise CorrectionError(f"merge suggestion {suggestion_id} was already {row[3]}")
    return row[1], row[2]


def _action(conn: psycopg.Connection, action: str, **payload: object) -> None:
    conn.execute(queries.persons_record_action, {"action": action, "payload": Jsonb(payload)})


def _title(text: str) -> str:
    """`text` cut to a topic title's 128 UTF-8 bytes, on a character boundary."""
    return text.encode("utf-8")[:TITLE_MAX_BYTES].decode("utf-8", errors="ignore")
