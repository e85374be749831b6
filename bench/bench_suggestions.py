"""The scheduled person passes and `recluster` at archive scale, on the faces-lfw analysis.

    .venv/bin/python bench/bench_suggestions.py [--npz /work/tmp/lfw/lfw_dlib.npz] [--photos N]
        [--skip-replay]

1. Replayed: the photos (order 1) through the real matcher on a fresh embedded PostgreSQL (as
   bench_persons.py), then timed: the merge-suggestion pass, the split pass, and a recluster dry
   run (a database matched by today's rules should barely move).
2. Chained: a database made impure on purpose, as the old single-linkage matcher left them:
   every identity's centred faces are one person, and identities are chained two by two into
   one person (direct inserts; strangers and background faces wait in the pending pool). Then
   `recluster` for real; printed: pairwise precision and recall before and after, what moved,
   what Telegram is told, and the time.

Figures, 2026-12-02, 2 cores shared with other jobs (`.venv/bin/python bench/bench_suggestions.py`,
all 5,130 photos, 5,512 faces; recluster in arrival order, faces agreeing at the join threshold):
1. replayed in 367 s: P 0.9934 R 0.706, 354 persons (as bench_persons.py); 2,987 faces in
   persons: merge pass 0.22 s (170 offers), split pass 1.49 s (none offered). recluster
   --dry-run: 5,199 faces decided again in 10.4 s: 4,991 unchanged, 58 to another person, 118
   out (mostly to review), 10 in from the pending pool; 15 new persons, 8 dissolved; nothing
   posted here, so only unsent posts change (176 cancelled, 68 due). The replay is not the
   matcher call for call (a photo's faces are decided one by one, the k-NN is exact), so 4 % of
   a database matched by today's rules still moves.
2. chained: before P 0.6473 R 0.993, 175 persons, largest 72 (purity 0.56); split pass 2.44 s
   (174 of 175 persons offered), merge pass 1.03 s. recluster in 18.6 s: 3,855 unchanged, 854
   to another person, 704 out to the pending pool or review, 42 in; 185 new persons; Telegram:
   1,557 posted messages to delete, 895 posts due. After: P 0.9934 R 0.702, 356 persons,
   largest 40 (purity 1.00); split pass 2.30 s (none offered), merge pass 1.66 s (173 offers).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import database  # noqa: E402
import recluster  # noqa: E402
import suggestions  # noqa: E402
from identity_matcher import IdentityMatcher, MatchParams  # noqa: E402
from replay import fresh_database, photo_inputs, replay  # noqa: E402
from tune_persons import Data, fmt, order, scores  # noqa: E402

CHAT = -1001234000555


async def passes(conninfo: str, params: MatchParams) -> None:
    pool = database.async_pool(conninfo, min_size=1, max_size=2)
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            faces, persons = (await (await conn.execute(
                "SELECT count(*), count(DISTINCT topic_id) FROM face_embeddings "
                "WHERE topic_id IS NOT NULL")).fetchone())
            start = time.perf_counter()
            merges = await suggestions.refresh_merge_suggestions(conn, params)
            merge_s = time.perf_counter() - start
            start = time.perf_counter()
            splits = await suggestions.refresh_split_suggestions(conn, params)
            split_s = time.perf_counter() - start
        print(f"  {faces} faces in {persons} persons: merge pass {merge_s:.2f} s ({merges} offers), "
              f"split pass {split_s:.2f} s ({splits} persons offered)", flush=True)
    finally:
        await pool.close()


async def replayed(conninfo: str, data: Data, photos, params: MatchParams) -> None:
    pool = database.async_pool(conninfo, min_size=1, max_size=2)
    await pool.open(wait=True)
    try:
        inputs = photo_inputs(data, photos)
        start = time.perf_counter()
        result = await replay(pool, IdentityMatcher(params), inputs)
        print(f"  replayed {len(photos)} photos in {time.perf_counter() - start:.0f} s", flush=True)
    finally:
        await pool.close()
    person_of_photo = [result.face_person.get(int(data.centred[ph])) if data.centred[ph] >= 0
                       else None for ph in photos]
    print(f"  matcher: {fmt(scores(data, photos, person_of_photo))}", flush=True)


def chained(conninfo: str, data: Data, photos) -> dict[int, int]:
    """Direct inserts: identities (>= 3 photos) chained two by two into one person; returns
    {face id: data index}."""
    with psycopg.connect(conninfo) as conn:
        register_vector(conn)
        ids = {str(data.identity[ph]) for ph in photos
               if data.centred[ph] >= 0 and data.count[ph] >= 3}
        person_of_identity: dict[str, int] = {}
        for k, identity in enumerate(sorted(ids)):
            if k % 2 == 0:
                person = conn.execute("INSERT INTO telegram_topics (label, topic_id) VALUES "
                                      "(%s, %s) RETURNING id", (f"Person {k}", 70000 + k)).fetchone()[0]
            person_of_identity[identity] = person
        face_index: dict[int, int] = {}
        for number, ph in enumerate(photos):
            media = conn.execute("INSERT INTO media_items (media_key, media_type, source_chat_id, "
                                 "source_message_id) VALUES (%s, 'photo', %s, %s) RETURNING id",
                                 (f"b:{number}", CHAT, number + 1)).fetchone()[0]
            for i in data.faces_of[int(ph)]:
                person = (person_of_identity.get(str(data.identity[ph]))
                          if i == data.centred[ph] else None)
                face = conn.execute(
                    "INSERT INTO face_embeddings (topic_id, embedding, source_chat_id, "
                    "source_message_id, quality_score, media_item_id, state, assigned_by, "
                    "low_quality) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                    (person, data.emb[i] / np.linalg.norm(data.emb[i]), CHAT, number + 1,
                     float(data.quality[i]), media, "assigned" if person else "pending",
                     "auto" if person else None, bool(data.low[i]))).fetchone()[0]
                face_index[face] = i
                if person:
                    conn.execute("INSERT INTO uploaded_media (topic_id, media_item_id, source_chat_id, "
                                 "source_message_id, status, uploaded_message_id, random_id) VALUES "
                                 "(%s, %s, %s, %s, 'posted', %s, 1)", (person, media, CHAT, number + 1,
                                                                      900000 + number))
        conn.commit()
    return face_index


def chained_scores(conninfo: str, data: Data, photos, face_index: dict[int, int]) -> str:
    with psycopg.connect(conninfo) as conn:
        now = dict(conn.execute("SELECT id, topic_id FROM face_embeddings").fetchall())
    person_of_face = {face_index[f]: p for f, p in now.items()}
    person_of_photo = [person_of_face.get(int(data.centred[ph])) if data.centred[ph] >= 0 else None
                       for ph in photos]
    return fmt(scores(data, photos, person_of_photo))


def summary(report: recluster.Report) -> str:
    lines = str(report).splitlines()
    return "\n  ".join(lines[:4] + lines[4:8] + ([f"  ({len(lines) - 8} more persons)"] if len(lines) > 8 else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", type=Path, default=Path("/work/tmp/lfw/lfw_dlib.npz"))
    parser.add_argument("--photos", type=int, default=None, help="default: all")
    parser.add_argument("--skip-replay", action="store_true")
    args = parser.parse_args(argv)
    data = Data.load(args.npz)
    n = min(args.photos or len(data.centred), len(data.centred))
    photos = order(len(data.centred), n, 1)
    params = MatchParams.for_engine("dlib")
    base = Path(tempfile.mkdtemp(prefix="fa-bench-suggestions-"))
    os.chmod(base, 0o755)
    server = database.embedded_server(base / "pgdata", cleanup_mode="delete")
    try:
        admin = server.get_uri("postgres")
        if not args.skip_replay:
            print(f"1. {n} photos replayed through the matcher (order 1):", flush=True)
            conninfo = fresh_database(admin, "replayed")
            asyncio.run(replayed(conninfo, data, photos, params))
            asyncio.run(passes(conninfo, params))
            with psycopg.connect(conninfo) as conn:
                report = recluster.recluster(conn, params, dry_run=True)
            print("  recluster --dry-run: " + summary(report), flush=True)
        print(f"2. {n} photos, identities chained two by two into persons (direct inserts):", flush=True)
        conninfo = fresh_database(admin, "chained")
        face_index = chained(conninfo, data, photos)
        print(f"  before: {chained_scores(conninfo, data, photos, face_index)}", flush=True)
        asyncio.run(passes(conninfo, params))
        with psycopg.connect(conninfo) as conn:
            report = recluster.recluster(conn, params)
        print("  recluster: " + summary(report), flush=True)
        print(f"  after: {chained_scores(conninfo, data, photos, face_index)}", flush=True)
        asyncio.run(passes(conninfo, params))
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
