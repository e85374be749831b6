"""What the matcher reads from the database: neighbours, persons as a whole, operator facts.

Every function takes the caller's connection (the matcher's transaction) and returns plain
data for match_rules.py. The k-NN search is pgvector's HNSW index (`persons_knn`: top-k of the
faces that pass its exclusions, then the similarity filter; 512-d embeddings through the index of
their half-precision copies, database.Queries.for_dimension); a person is seen as a whole through its face count and mean
embedding (`persons_views`, computed from its faces, so no cached centroid can go stale when
the operator moves, merges or dismisses faces).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from database import queries
from match_rules import Neighbour, PendingFace, PersonView

if TYPE_CHECKING:
    import psycopg


async def knn(conn: psycopg.AsyncConnection, embedding: np.ndarray, k: int,
              min_similarity: float, *, media_item_id: int | None = None,
              skip: Iterable[int] = (), with_embedding: bool = False) -> list[Neighbour]:
    """The `k` stored faces nearest to `embedding` other than those of `media_item_id` and
    `skip`, those at least `min_similarity` alike (with their embeddings if `with_embedding`)."""
    rows = await (await conn.execute(queries.for_dimension("persons_knn", len(embedding)), {
        "embedding": embedding, "k": k, "min_similarity": min_similarity,
        "media_item_id": media_item_id, "skip_ids": sorted(skip), "with_embedding": with_embedding})).fetchall()
    return [Neighbour(r[0], r[6] if r[1] == "assigned" else None, r[1], r[2], r[3], r[4],
                      float(r[5]), None if r[7] is None else r[7].to_numpy().astype(np.float32))
            for r in rows]


async def person_views(conn: psycopg.AsyncConnection,
                       person_ids: set[int]) -> dict[int, PersonView]:
    """Face count and mean embedding of each person (ids already followed through merges)."""
    if not person_ids:
        return {}
    rows = await (await conn.execute(queries.persons_views,
                                     {"person_ids": sorted(person_ids)})).fetchall()
    return {r[0]: PersonView(r[0], int(r[1]), r[2].to_numpy().astype(np.float32)) for r in rows}


async def rejections(conn: psycopg.AsyncConnection, face_ids: list[int]) -> dict[int, set[int]]:
    """The operator's "not this person" facts about these faces: {face: {persons}}."""
    found: dict[int, set[int]] = {}
    if face_ids:
        for face_id, person_id in await (await conn.execute(
                queries.persons_rejections, {"face_ids": face_ids})).fetchall():
            found.setdefault(face_id, set()).add(person_id)
    return found


async def media_persons(conn: psycopg.AsyncConnection, media_item_id: int,
                        except_ids: list[int]) -> set[int]:
    """Persons that already have a face in the media item, other than the faces `except_ids`."""
    return {r[0] for r in await (await conn.execute(queries.persons_media_persons, {
        "media_item_id": media_item_id, "except_ids": except_ids})).fetchall()}


async def pending_units(conn: psycopg.AsyncConnection, face_ids: list[int]) -> list[PendingFace]:
    """The pending faces of the units (photo face, or video track) of these faces."""
    if not face_ids:
        return []
    rows = await (await conn.execute(queries.persons_pending_units,
                                     {"face_ids": face_ids})).fetchall()
    return [PendingFace(r[0], r[1], r[2], r[3].to_numpy(), r[4]) for r in rows]


async def seed_candidates(conn: psycopg.AsyncConnection, embedding: np.ndarray, k: int,
                          min_similarity: float, *, media_item_id: int | None = None
                          ) -> list[tuple[float, PendingFace]]:
    """The `k` nearest good pending faces (not of `media_item_id`), those at least
    `min_similarity` alike."""
    statement = queries.for_dimension("persons_seed_candidates", len(embedding))
    rows = await (await conn.execute(statement, {
        "embedding": embedding, "k": k, "min_similarity": min_similarity,
        "media_item_id": media_item_id})).fetchall()
    return [(float(r[4]), PendingFace(r[0], r[1], r[2], r[3].to_numpy())) for r in rows]
