"""The matcher's and the dashboard's kNN queries on a real PostgreSQL + pgvector 0.8.

Filters inside the index scan (hnsw.iterative_scan, database.SESSION_SETTINGS) still return k
rows when the nearest faces are the ones left out; 512-d embeddings are searched through the
HNSW index of their half-precision copies (migration 0006, database.Queries.for_dimension).
Each test runs with a tiny ef_search and sequential scans off, so that the HNSW index answers
and a filter applied after its top-k would visibly return fewer rows.
"""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

import database
import match_search as search
from database import queries


async def _store(conn, faces: np.ndarray, rows: list[tuple[int | None, str, int]]) -> list[int]:
    """Faces with (person or None, state, media item) each; their ids."""
    media = sorted({m for _, _, m in rows})
    ids = {}
    for m in media:
        ids[m] = (await (await conn.execute(
            "INSERT INTO media_items (media_key, media_type, source_chat_id, source_message_id) "
            "VALUES (%s, 'photo', -1, %s) RETURNING id", (f"m{m}", m))).fetchone())[0]
    out = []
    for face, (person, state, m) in zip(faces, rows):
        out.append((await (await conn.execute(
            "INSERT INTO face_embeddings (topic_id, state, embedding, source_chat_id, "
            "source_message_id, media_item_id) VALUES (%s, %s, %s, -1, %s, %s) RETURNING id",
            (person, state, face, m, ids[m]))).fetchone())[0])
    await conn.execute("ANALYZE face_embeddings")
    await conn.execute("SET enable_seqscan = off")   # the HNSW index answers, as at scale
    await conn.execute("SET hnsw.ef_search = 10")    # fewer candidates than the rows left out
    return out


def _cluster(rng, count: int, dim: int) -> np.ndarray:
    centre = rng.normal(size=dim)
    return (centre + 0.3 * rng.normal(size=(count, dim))).astype(np.float32)


async def _person(conn) -> int:
    return (await (await conn.execute(
        "INSERT INTO telegram_topics (label) VALUES ('p') RETURNING id")).fetchone())[0]


async def test_the_nearest_faces_leave_out_the_photos_own_faces_inside_the_scan(pool):
    """A stored face is its own nearest neighbour, and the faces of its photo or video are next:
    the matcher's k neighbours are k faces of other media items all the same."""
    rng = np.random.default_rng(5)
    faces = _cluster(rng, 120, 128)
    async with pool.connection() as conn:
        person = await _person(conn)
        # 100 faces of one video (media item 1), 20 of other photos, all one person
        ids = await _store(conn, faces, [(person, "assigned", 1 if i < 100 else 2 + i)
                                         for i in range(120)])
        media_1 = (await (await conn.execute(
            "SELECT media_item_id FROM face_embeddings WHERE id = %s", (ids[0],))).fetchone())[0]
        found = await search.knn(conn, faces[0], 8, -1.0, media_item_id=media_1,
                                 skip={ids[100], ids[101]})
        everything = await search.knn(conn, faces[0], 8, -1.0)
    assert len(found) == 8 and all(n.media_item_id != media_1 for n in found)
    assert {ids[100], ids[101]}.isdisjoint(n.face_id for n in found)
    assert len(everything) == 8 and everything[0].face_id == ids[0]


async def test_seed_candidates_are_the_nearest_pending_faces_behind_a_crowd_of_assigned_ones(pool):
    rng = np.random.default_rng(6)
    faces = _cluster(rng, 200, 128)
    async with pool.connection() as conn:
        person = await _person(conn)
        # 180 assigned faces and the anchor's own photo around it; 20 pending faces of other photos
        rows = [(person, "assigned", 3 + i) for i in range(180)] + [
            (None, "pending", 500 + i) for i in range(20)]
        rows[0] = (None, "pending", 1)
        ids = await _store(conn, faces, rows)
        anchor_media = (await (await conn.execute(
            "SELECT media_item_id FROM face_embeddings WHERE id = %s", (ids[0],))).fetchone())[0]
        found = await search.seed_candidates(conn, faces[0], 8, -1.0, media_item_id=anchor_media)
    assert len(found) == 8
    assert {c.face_id for _, c in found} <= set(ids[180:])


async def test_search_by_photo_finds_k_faces_of_persons_past_the_pending_ones(pool):
    rng = np.random.default_rng(7)
    faces = _cluster(rng, 200, 128)
    async with pool.connection() as conn:
        persons = [await _person(conn) for _ in range(4)]
        rows = [(None, "pending", 1 + i) for i in range(180)] + [
            (persons[i % 4], "assigned", 300 + i) for i in range(20)]
        await _store(conn, faces, rows)
        found = await (await conn.execute(
            queries.for_dimension("dashboard_nearest_persons", 128),
            {"embedding": faces[0], "k": 12, "persons": 10})).fetchall()
    assert sum(r[2] for r in found) == 12 and {r[0] for r in found} == set(persons)


@pytest.fixture
def arcface_db(db_conninfo) -> str:
    database.ensure_engine(db_conninfo, "insightface", 512)
    return db_conninfo


def _indexes(conninfo: str) -> dict[str, str]:
    with psycopg.connect(conninfo) as conn:
        return dict(conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'face_embeddings' "
            "AND indexdef LIKE '%hnsw%'").fetchall())


async def test_512_d_faces_are_searched_through_the_half_precision_index(arcface_db):
    assert list(_indexes(arcface_db)) == ["idx_embeddings_halfvec"]
    rng = np.random.default_rng(8)
    faces = _cluster(rng, 150, 512)
    unit = faces / np.linalg.norm(faces, axis=1, keepdims=True)
    pool = database.async_pool(arcface_db, min_size=1, max_size=1)
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            person = await _person(conn)
            ids = await _store(conn, faces, [(person, "assigned", 1 + i) for i in range(150)])
            await conn.execute("SET hnsw.ef_search = 40")
            statement = queries.for_dimension("persons_knn", 512)
            plan = " ".join(r[0] for r in await (await conn.execute(
                "EXPLAIN " + statement, {"embedding": faces[3], "k": 16, "min_similarity": -1.0,
                                         "media_item_id": None, "skip_ids": [], "with_embedding": False})).fetchall())
            found = await search.knn(conn, faces[3], 16, -1.0)
    finally:
        await pool.close()
    assert "idx_embeddings_halfvec" in plan
    exact = [ids[i] for i in np.argsort(-(unit @ unit[3]))[:16]]
    assert len(found) == 16 and found[0].face_id == ids[3]
    assert len({n.face_id for n in found} & set(exact)) >= 15   # half precision: ties may swap
    assert found[1].similarity == pytest.approx(float(unit[3] @ unit[np.argsort(-(unit @ unit[3]))[1]]),
                                                abs=2e-3)


def test_an_engine_of_another_dimension_gets_its_own_kind_of_index(arcface_db):
    database.ensure_engine(arcface_db, "dlib", 128)
    assert list(_indexes(arcface_db)) == ["idx_embeddings_vector"]
    assert queries.for_dimension("persons_knn", 128) == queries.persons_knn
    database.ensure_engine(arcface_db, "insightface", 512)
    assert list(_indexes(arcface_db)) == ["idx_embeddings_halfvec"]
    assert "embedding::halfvec(512) <=> %(embedding)s::halfvec(512)" in queries.for_dimension(
        "persons_seed_candidates", 512)


async def test_pool_connections_search_with_the_measured_ef_search(pool):
    async with pool.connection() as conn:
        shown = await (await conn.execute("SELECT current_setting('hnsw.ef_search'), "
                                          "current_setting('hnsw.iterative_scan')")).fetchone()
    assert shown == (str(database.HNSW_EF_SEARCH), "strict_order")
