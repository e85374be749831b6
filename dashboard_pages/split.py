"""Splitting a person that holds several people: its faces grouped by likeness, each group but
the biggest made a person of its own in one action (undone as one, see undo.py).

The groups come from average linkage at the matcher's join threshold (identity_matcher: a face
joins a person when its mean similarity to the person's faces reaches it), so a group is what
the matcher would have made one person of. The operator checks the groups before splitting
and fixes what is left with the usual tools (move a face, merge two persons).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

import persons
from dashboard_pages import app, corrections
from database import queries
from identity_matcher import MatchParams

MOST_FACES = 400      # grouping is quadratic in memory and cubic at worst in time
SHOWN_PER_GROUP = 8


def look_alike_groups(embeddings: np.ndarray, threshold: float) -> list[list[int]]:
    """Groups of row indices of `embeddings`, merged while the mean cosine similarity between
    two groups reaches `threshold` (most alike first); biggest group first."""
    x = np.asarray(embeddings, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sums = x @ x.T                              # sum of similarities between groups i and j
    sizes = np.ones(len(x))
    members = [[i] for i in range(len(x))]
    alive = np.ones(len(x), dtype=bool)
    np.fill_diagonal(sums, -np.inf)
    while alive.sum() > 1:
        mean = sums / np.outer(sizes, sizes)
        mean[~alive, :] = -np.inf
        mean[:, ~alive] = -np.inf
        a, b = np.unravel_index(np.argmax(mean), mean.shape)
        if mean[a, b] < threshold:
            break
        sums[a, :] += sums[b, :]
        sums[:, a] += sums[:, b]
        sums[a, a] = -np.inf
        sizes[a] += sizes[b]
        members[a] += members[b]
        alive[b] = False
    return sorted((sorted(members[i]) for i in np.flatnonzero(alive)), key=lambda g: (-len(g), g[0]))


def split_person(conn, person_id: int, groups: list[list[int]]) -> list[int]:
    """Each group of faces of `person_id` becomes a new person (persons.move_faces_to_new_person),
    in one transaction; return the new persons' ids."""
    return [persons.move_faces_to_new_person(conn, group) for group in groups]


def offer(person: dict[str, Any]) -> None:
    """The "look-alike groups" tool of a person page."""
    key = f"split_{person['id']}"
    if person["faces"] < 2:
        return
    if not st.session_state.get(key):
        if st.button("Find look-alike groups", key=f"{key}_find", icon=":material/call_split:",
                     help="Groups this person's faces by likeness, to split a person that holds several people."):
            st.session_state[key] = True
            st.rerun()
        return
    faces = app.rows(queries.split_person_faces, {"person_id": person["id"], "limit": MOST_FACES})
    threshold = MatchParams.for_engine(app.settings().face_engine).similarity_threshold
    embeddings = np.array([f["embedding"].to_numpy() for f in faces])   # pgvector's Vector
    groups = [[faces[i] for i in g] for g in look_alike_groups(embeddings, threshold)]
    with st.container(border=True):
        st.markdown(f"**{app.plural(len(groups), 'look-alike group')}** among "
                    f"{app.plural(len(faces), 'face')}" + (f" (the best {MOST_FACES})" if person["faces"] > MOST_FACES else "")
                    + ": the first stays " + corrections.name(person) + ", each other one becomes a person.")
        for number, group in enumerate(groups[:30], start=1):
            row = st.columns([1] + [1] * SHOWN_PER_GROUP, vertical_alignment="center")
            row[0].caption(f"{'stays' if number == 1 else f'new {number - 1}'} · {app.plural(len(group), 'face')}")
            for column, face in zip(row[1:], group[:SHOWN_PER_GROUP]):
                column.image(face["crop_jpeg"], width="stretch")
        if len(groups) > 30:
            st.caption(f"… and {len(groups) - 30} more groups.")
        if len(groups) == 1:
            st.caption("All its faces look alike: nothing to split.")
            return
        go, close = st.columns([2, 1])
        moving = [[f["id"] for f in g] for g in groups[1:]]
        if go.button(f"Split into {app.plural(len(groups), 'person')}", key=f"{key}_go", type="primary"):
            st.session_state[key] = False
            corrections.apply(split_person, person["id"], moving,
                              done=lambda ids: f"Split: {app.plural(len(ids), 'new person', 'new persons')} "
                                               f"(#{ids[0]}–#{ids[-1]}); name them on their pages.")
        if close.button("Close", key=f"{key}_close"):
            st.session_state[key] = False
            st.rerun()
