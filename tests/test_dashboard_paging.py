"""The dashboard's long lists page by keyset (sql/dashboard.sql): following each page's last
cursor_* columns as the next page's %(after_*)s lists every row once, in the list's order, with
ties and missing values (equal face counts, no last-seen date, no quality) as they come."""

from __future__ import annotations

import re

import numpy as np
import psycopg
import pytest
from psycopg.rows import dict_row

from database import queries


def _pages(conn, query: str, params: dict, limit: int) -> list[list[dict]]:
    after = {name: None for name in re.findall(r"%\((after_\w+)\)s", query)}
    pages = []
    while True:
        rows = conn.execute(query, params | {"limit": limit} | after).fetchall()
        if not rows:
            return pages
        pages.append(rows)
        after = {f"after_{k.removeprefix('cursor_')}": v for k, v in rows[-1].items()
                 if k.startswith("cursor_")}


@pytest.fixture
def db(dlib_db):
    with psycopg.connect(dlib_db, row_factory=dict_row, autocommit=True) as conn:
        from pgvector.psycopg import register_vector
        register_vector(conn)
        yield conn


@pytest.mark.parametrize("sort", ["faces", "recent", "name"])
def test_the_gallery_pages_through_every_person_once_in_order(db, sort):
    # 23 persons: face counts with ties, some never seen, labels differing only in case
    db.execute("""INSERT INTO telegram_topics (label, embedding_count, last_seen)
                  SELECT CASE WHEN g % 3 = 0 THEN 'ann ' ELSE 'Ann ' END || (g % 5),
                         g % 4, CASE WHEN g % 6 = 0 THEN NULL
                                      ELSE timestamptz '2026-01-01' + (g % 7) * interval '1 day' END
                  FROM generate_series(1, 23) g""")
    params = {"label": "", "show_hidden": False, "sort": sort}
    pages = _pages(db, queries.dashboard_persons, params, 5)
    listed = [r["id"] for page in pages for r in page]
    everyone = db.execute("SELECT id, lower(label) AS name, embedding_count AS n, last_seen "
                          "FROM telegram_topics").fetchall()
    key = {"faces": lambda r: (-r["n"], r["id"]),
           "name": lambda r: (r["name"], -r["n"], r["id"]),
           "recent": lambda r: (r["last_seen"] is None,
                                -(r["last_seen"].timestamp() if r["last_seen"] else 0), -r["n"], r["id"])}
    assert listed == [r["id"] for r in sorted(everyone, key=key[sort])]
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]


def test_a_persons_faces_media_and_the_review_list_page_through_everything(db):
    person = db.execute("INSERT INTO telegram_topics (label) VALUES ('p') RETURNING id").fetchone()["id"]
    db.execute("""INSERT INTO media_items (media_key, media_type, source_chat_id, source_message_id,
                                           message_date)
                  SELECT 'm' || g, 'photo', -1, g,
                         CASE WHEN g % 5 = 0 THEN NULL ELSE timestamptz '2026-01-01' + (g % 3) * interval '1 hour' END
                  FROM generate_series(1, 17) g""")
    rng = np.random.default_rng(1)
    for i, media in enumerate(r["id"] for r in db.execute("SELECT id FROM media_items ORDER BY id")):
        for j in range(2):
            state = "assigned" if j == 0 else "review"
            db.execute("INSERT INTO face_embeddings (topic_id, state, embedding, source_chat_id, "
                       "source_message_id, media_item_id, quality_score, low_quality, "
                       "detection_timestamp) VALUES (%s, %s, %s, -1, %s, %s, %s, %s, "
                       "timestamptz '2026-02-01' + %s * interval '1 minute')",
                       (person if state == "assigned" else None, state,
                        rng.normal(size=128).astype(np.float32), i, media,
                        None if i % 4 == 0 else round(0.1 * (i % 3), 1), i % 5 == 1, i % 6))

    faces = [r["id"] for p in _pages(db, queries.dashboard_person_faces, {"person_id": person}, 4)
             for r in p]
    assert faces == [r["id"] for r in db.execute(
        "SELECT id FROM face_embeddings WHERE topic_id = %s "
        "ORDER BY low_quality, quality_score DESC, id", (person,)).fetchall()]

    media = [r["id"] for p in _pages(db, queries.dashboard_person_media, {"person_id": person}, 4)
             for r in p]
    assert media == [r["id"] for r in db.execute(
        "SELECT id FROM media_items ORDER BY message_date DESC NULLS LAST, id DESC").fetchall()]

    review = [r["id"] for p in _pages(db, queries.dashboard_review_faces, {}, 4) for r in p]
    assert review == [r["id"] for r in db.execute(
        "SELECT id FROM face_embeddings WHERE state = 'review' "
        "ORDER BY detection_timestamp, id").fetchall()]
