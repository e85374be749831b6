"""The daemon's scheduled look at all persons (every PERSON_SUGGESTIONS_MINUTES): which pairs may
be one person (merge suggestions) and which persons may be two (split suggestions, purity.py).
Offers only: the operator decides on the Review page.

**Merge suggestions, ranked by agreeing faces.** Every visible person is seen as a whole (its
mean embedding, as the matcher sees it). A face of person A *agrees* with person B when its
average linkage to B (its mean similarity to B's faces, = its dot product with B's mean) reaches
the join threshold (on its own it would join B); a pair is offered when some of its faces agree, ranked by how many of
the two persons' faces agree (`agreeing`, out of `faces`), with the persons' average linkage to
each other as `score` — not by one lucky pair of faces. Never offered: a pair seen together in one
photo or video (two faces of one media item are two people), a pair the operator split (a face of
one was moved out of the other), merged or hidden persons, and a pair already answered. Open
offers the pass no longer finds (e.g. made while matching from one close pair) are withdrawn.

Cost: one matrix product of all faces with all persons' means, in blocks, and one query for the
pairs never offered. Measured with `.venv/bin/python bench/bench_suggestions.py` (2 cores shared
with other jobs): on the 5,130 faces-lfw photos replayed through the real matcher (2,987 faces
in 354 persons) the merge pass takes 0.22 s (170 offers) and the split pass 1.49 s; on the same
photos chained two by two into 175 persons (3,646 faces), 1.03 s and 2.44 s (174 persons
offered for a split, none after `recluster`).

Why the join threshold: on the matcher's persons of those 5,130 photos (tune_persons.Sim, order
1; 78 pairs of persons are one identity) faces agreeing at the suggestion threshold (0.9125)
made 1,061 offers with 3 true pairs among the first 50; at 0.92, 469 offers and 27; at the join
threshold (0.93), 170 offers holding 77 of the 78 true pairs, 39 of them among the first 50.
The pass it replaces (k-NN of each person's 5 best faces, one
best pair per pair of persons) made one query per face.

**Split suggestions.** Every person with at least 2 x MIN_FACES_FOR_PERSON faces is cut in two by
average linkage (purity.split_groups); when the groups do not agree with each other by the join
rule, the smaller is offered as a new person (kept up to date while open; a rejected offer comes
back only once the person has grown by half).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from psycopg_pool import AsyncConnectionPool

from database import queries
from identity_matcher import MatchParams
from job_queue import DB_UNAVAILABLE, first_line
from purity import split_groups
from stoppable import Stoppable

logger = logging.getLogger(__name__)

BLOCK = 4096   # faces per block of the face x person product


@dataclass(frozen=True)
class PairAgreement:
    person_a: int
    person_b: int
    agreeing: int      # faces of either that agree with the other person as a whole
    faces: int         # the two persons' faces
    score: float       # average linkage between the two persons


def agreements(person_of_face: np.ndarray, embeddings: np.ndarray, threshold: float,
               forbidden: set[tuple[int, int]]) -> list[PairAgreement]:
    """Pairs of persons some of whose faces agree with the other, most agreeing first. On
    numbers: `person_of_face[i]` is face i's person, `embeddings[i]` its unit vector;
    `forbidden`: pairs (a < b) never offered."""
    if not len(embeddings):
        return []
    persons, index = np.unique(person_of_face, return_inverse=True)
    sizes = np.bincount(index)
    means = np.zeros((len(persons), embeddings.shape[1]), np.float64)
    np.add.at(means, index, embeddings)
    means /= sizes[:, None]
    counts: dict[tuple[int, int], int] = defaultdict(int)
    for start in range(0, len(embeddings), BLOCK):
        link = embeddings[start:start + BLOCK] @ means.T
        rows = np.arange(link.shape[0])
        link[rows, index[start:start + BLOCK]] = -1.0          # not its own person
        faces, others = np.nonzero(link >= threshold)
        own = index[start + faces]
        a, b = np.minimum(own, others), np.maximum(own, others)
        pairs, n = np.unique(a * len(persons) + b, return_counts=True)
        for code, c in zip(pairs.tolist(), n.tolist()):
            counts[divmod(code, len(persons))] += c
    out = []
    for (i, j), agreeing in counts.items():
        a, b = int(persons[i]), int(persons[j])
        if (a, b) in forbidden:
            continue
        out.append(PairAgreement(a, b, agreeing, int(sizes[i] + sizes[j]),
                                 round(float(means[i] @ means[j]), 4)))
    return sorted(out, key=lambda p: (-p.agreeing, -p.score, p.person_a, p.person_b))


async def refresh_merge_suggestions(conn, params: MatchParams) -> int:
    """The full merge-suggestion pass (its own transaction); returns the offers made or updated."""
    async with conn.transaction():
        rows = await (await conn.execute(queries.suggestions_person_faces)).fetchall()
        forbidden = {(min(a, b), max(a, b)) for a, b in await (await conn.execute(
            queries.suggestions_forbidden_pairs)).fetchall()}
        if not rows:
            await conn.execute(queries.suggestions_withdraw, {"person_a": [], "person_b": []})
            return 0
        person_of_face = np.array([r[0] for r in rows], np.int64)
        embeddings = np.stack([r[1].to_numpy() for r in rows]).astype(np.float32)
        # numpy off the event loop: the daemon's other tasks (Telegram, uploads) keep running
        found = await asyncio.to_thread(agreements, person_of_face, embeddings,
                                        params.similarity_threshold, forbidden)
        columns = {"person_a": [p.person_a for p in found], "person_b": [p.person_b for p in found],
                   "score": [p.score for p in found], "agreeing": [p.agreeing for p in found],
                   "faces": [p.faces for p in found]}
        await conn.execute(queries.suggestions_withdraw, {"person_a": columns["person_a"],
                                                          "person_b": columns["person_b"]})
        made = await (await conn.execute(queries.suggestions_upsert, columns)).fetchall()
    return len(made)


async def refresh_split_suggestions(conn, params: MatchParams) -> int:
    """Offer a split of every person whose faces form two groups that do not agree; returns
    the persons offered."""
    offered = 0
    async with conn.transaction():
        rows = await (await conn.execute(queries.suggestions_split_faces,
                                         {"min_faces": 2 * params.min_faces})).fetchall()
        known = {r[0]: r for r in await (await conn.execute(queries.suggestions_splits_known)).fetchall()}
        by_person: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
        for person, face, embedding in rows:
            by_person[person].append((face, embedding.to_numpy()))
        for person, faces in sorted(by_person.items()):
            split = await asyncio.to_thread(split_groups, np.stack([e for _, e in faces]),
                                            params.similarity_threshold, params.min_faces)
            prior = known.get(person)   # (person, status, person_faces) of its latest offer
            if split is None:
                if prior is not None and prior[1] == "open":
                    await conn.execute(queries.suggestions_split_withdraw, {"person_id": person})
                continue
            if prior is not None and prior[1] == "rejected" and len(faces) < 1.5 * prior[2]:
                continue
            await conn.execute(queries.suggestions_split_offer, {
                "person_id": person, "face_ids": [faces[i][0] for i in split.smaller],
                "person_faces": len(faces), "score": split.linkage})
            offered += 1
    return offered


class Suggestions(Stoppable):
    """Both passes now, then every `interval` seconds, until stopped."""

    def __init__(self, pool: AsyncConnectionPool, params: MatchParams, interval: float):
        super().__init__()
        self.pool, self.params, self.interval = pool, params, interval

    async def sweep(self) -> tuple[int, int]:
        async with self.pool.connection() as conn:
            merges = await refresh_merge_suggestions(conn, self.params)
            splits = await refresh_split_suggestions(conn, self.params)
        logger.info("person suggestions: %d merge offer(s) made or re-ranked, %d person(s) offered "
                    "for a split (dashboard: Review)", merges, splits)
        return merges, splits

    async def run(self) -> None:
        while not self.stopping:
            try:
                await self.sweep()
            except DB_UNAVAILABLE as exc:
                logger.warning("person suggestions: the database is unavailable (%s); next round",
                               first_line(exc))
            if await self.until_stopped(self.interval):
                return
