"""Photos' analysed faces replayed through the real matcher on a real PostgreSQL.

Used by bench/bench_persons.py and tests/test_matcher_scale.py: each photo is one media item
(made as the queue makes one) whose faces go through `IdentityMatcher.assign` in its own
transaction, as a worker stores a job. Returns the final person of every face.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import database
from database import queries
from identity_matcher import IdentityMatcher
from media_processor import DetectedFace

CHAT_ID = -1001234000777


@dataclass
class Replayed:
    face_person: dict[int, int | None]   # input face index -> its person now (None: none)
    face_state: dict[int, str]           # input face index -> assigned/pending/review/duplicate
    seconds: float                       # wall time in assign (before the commit)


def detected(embedding: np.ndarray, bbox: Sequence[float], quality: float) -> DetectedFace:
    return DetectedFace(bbox=tuple(float(v) for v in bbox),
                        landmarks=np.zeros((5, 2), np.float32), det_score=1.0,
                        embedding=np.asarray(embedding, np.float32), quality=float(quality),
                        crop_jpeg=b"")


def photo_inputs(data, photos) -> list[list[tuple[int, DetectedFace]]]:
    """The analysed faces of `photos` (indices into a bench/tune_persons.py `Data`), as `replay` takes them."""
    return [[(i, detected(data.emb[i], data.bbox[i], data.quality[i])) for i in data.faces_of[int(ph)]]
            for ph in photos]


def fresh_database(admin: str, name: str) -> str:
    """Database `name` made anew on the server of `admin`, migrated, recorded as dlib's; its conninfo."""
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    conninfo = make_conninfo(**(conninfo_to_dict(admin) | {"dbname": name}))
    database.migrate(conninfo)
    database.ensure_engine(conninfo, "dlib", 128)
    return conninfo


async def replay(pool, matcher: IdentityMatcher,
                 photos: Sequence[Sequence[tuple[int, DetectedFace]]]) -> Replayed:
    """`photos`: per photo, its (face index, face) pairs, in arrival order."""
    stored: dict[int, int] = {}        # face index -> row id
    duplicate_of: dict[int, int] = {}  # face index -> person it duplicated
    state: dict[int, str] = {}
    seconds = 0.0
    for number, faces in enumerate(photos):
        if not faces:
            continue
        async with pool.connection() as conn:
            await conn.execute(queries.bench_fast_commit)
            async with conn.transaction():  # one job: its media item, faces and persons
                row = await (await conn.execute(queries.bench_insert_media_item, {
                    "media_key": f"bench:{number}:{faces[0][0]}", "chat_id": CHAT_ID,
                    "message_id": number + 1})).fetchone()
                start = time.perf_counter()
                result = await matcher.assign(conn, row[0], [f for _, f in faces])
                seconds += time.perf_counter() - start  # the commit is the job's, not matching's
        for outcome in result.faces:
            index = faces[outcome.index][0]
            state[index] = outcome.state
            if outcome.face_id is None:
                duplicate_of[index] = outcome.person_id
            else:
                stored[index] = outcome.face_id
    async with pool.connection() as conn:
        now = {r[0]: r[1] for r in await (await conn.execute(queries.bench_face_persons)).fetchall()}
        states = {r[0]: r[2] for r in await (await conn.execute(queries.bench_face_persons)).fetchall()}
    person = {i: now.get(face_id) for i, face_id in stored.items()}
    person.update(duplicate_of)
    state.update({i: states[face_id] for i, face_id in stored.items()})
    return Replayed(person, state, seconds)
