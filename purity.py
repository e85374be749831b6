"""Persons whose faces stop agreeing with each other: offered for a split, never split silently.

`split_groups` is the rule, on numbers: the person's faces cut into two groups by average
linkage (agglomerative, cosine); if both groups have at least `min_faces` faces and the groups'
average linkage to each other (the mean similarity between a face of one and a face of the other,
= the dot product of their mean embeddings) is below the join threshold, the two would not be one
person by the matcher's own rule, and the smaller group is proposed as a new person.
suggestions.py runs it over every person on a schedule and stores the offers in
split_suggestions; the review page shows them. `accept_split_suggestion` moves the smaller group
to a new person through persons.move_faces_to_new_person (the operator's move: its posts
withdrawn and due, "not this person" recorded); `reject_split_suggestion` records the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import psycopg

import persons
from database import queries
from persons import CorrectionError

MAX_CLUSTERED = 400   # faces clustered per person; the rest join the nearer group's mean


@dataclass(frozen=True)
class Split:
    smaller: list[int]          # indices into the person's faces
    larger: list[int]
    linkage: float              # average linkage between the two groups


def split_groups(embeddings: np.ndarray, join_threshold: float, min_faces: int) -> Split | None:
    """Two groups of the person's (unit) embeddings that do not agree, or None."""
    n = len(embeddings)
    if n < 2 * min_faces:
        return None
    from scipy.cluster.hierarchy import fcluster, linkage

    e = np.asarray(embeddings, np.float64)
    sample = np.linspace(0, n - 1, min(n, MAX_CLUSTERED)).round().astype(int)
    distances = np.clip(1.0 - e[sample] @ e[sample].T, 0.0, 2.0)
    condensed = distances[np.triu_indices(len(sample), 1)]
    labels = fcluster(linkage(condensed, "average"), 2, "maxclust")
    if len(set(labels)) < 2:
        return None
    means = [e[sample[labels == k]].mean(axis=0) for k in (1, 2)]
    side = np.argmax(np.stack([e @ means[0], e @ means[1]], axis=1), axis=1)  # every face
    groups = [np.flatnonzero(side == k).tolist() for k in (0, 1)]
    if min(len(g) for g in groups) < min_faces:
        return None
    between = float(e[groups[0]].mean(axis=0) @ e[groups[1]].mean(axis=0))
    if between >= join_threshold:
        return None
    smaller, larger = sorted(groups, key=lambda g: (len(g), g))
    return Split(smaller, larger, round(between, 4))


def accept_split_suggestion(conn: psycopg.Connection, suggestion_id: int) -> int:
    """Move the suggestion's smaller group (those of its faces still in the person) to a new
    person; return the new person's id."""
    with conn.transaction():
        row = conn.execute(queries.splits_for_update, {"suggestion_id": suggestion_id}).fetchone()
        person_id, face_ids = _open(row, suggestion_id)
        still = [r[0] for r in conn.execute(queries.splits_faces_still_there, {
            "person_id": person_id, "face_ids": face_ids}).fetchall()]
        if not still:
            raise CorrectionError(f"the faces of split suggestion {suggestion_id} are no longer "
                                  f"in person {person_id}")
        new = persons.move_faces_to_new_person(conn, still)
        conn.execute(queries.splits_decide, {"suggestion_id": suggestion_id, "status": "accepted"})
    return new


def reject_split_suggestion(conn: psycopg.Connection, suggestion_id: int) -> None:
    """"One person after all": not offered again until the person has grown by half."""
    with conn.transaction():
        row = conn.execute(queries.splits_for_update, {"suggestion_id": suggestion_id}).fetchone()
        _open(row, suggestion_id)
        conn.execute(queries.splits_decide, {"suggestion_id": suggestion_id, "status": "rejected"})


def _open(row, suggestion_id: int) -> tuple[int, list[int]]:
    if row is None:
        raise CorrectionError(f"split suggestion {suggestion_id} does not exist")
    if row[2] != "open":
        raise CorrectionError(f"split suggestion {suggestion_id} was already {row[2]}")
    return row[0], list(row[1])
