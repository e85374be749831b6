"""`main.py recluster` on a real PostgreSQL made impure on purpose, with real dlib faces of
faces-lfw (tests/lfw_dlib_subset.npz): two people chained into one person, as the old
single-linkage matcher did, next to the operator's facts that must survive."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

import recluster
from identity_matcher import MatchParams
from recluster_replay import StoredFace, Thresholds, replay

FIXTURE = Path(__file__).resolve().parent / "lfw_dlib_subset.npz"
CHAT = -1001234000999


@pytest.fixture(scope="module")
def lfw():
    """Centred (labelled) faces by identity, the most photographed first: {identity: [vectors]}."""
    d = np.load(FIXTURE)
    by: dict[int, list[np.ndarray]] = {}
    for i in np.flatnonzero(d["is_centred"]):
        who = int(d["identity"][d["photo"][i]])
        if who >= 0 and d["quality"][i] >= 0.7:
            by.setdefault(who, []).append(d["embeddings"][i] / np.linalg.norm(d["embeddings"][i]))
    return [by[w] for w, _ in Counter({w: len(v) for w, v in by.items()}).most_common()]


@pytest.fixture
def db(dlib_db):
    with psycopg.connect(dlib_db, autocommit=True) as conn:
        register_vector(conn)
        yield conn


class Archive:
    """Direct inserts, as a database matched by the old code holds them."""

    def __init__(self, db):
        self.db, self.message = db, 0

    def person(self, label: str | None = None, topic: int | None = None, hidden: bool = False) -> int:
        return self.db.execute(
            "INSERT INTO telegram_topics (label, label_is_manual, topic_id, hidden) VALUES "
            "(%s, %s, %s, %s) RETURNING id", (label or "Person", label is not None, topic,
                                              hidden)).fetchone()[0]

    def face(self, vector, person: int | None, by: str | None = "auto", post: str | None = None) -> tuple[int, int]:
        """A photo with one face; `post`: its outbox row in the person's topic. (face, media)."""
        self.message += 1
        media = self.db.execute(
            "INSERT INTO media_items (media_key, media_type, source_chat_id, source_message_id) "
            "VALUES (%s, 'photo', %s, %s) RETURNING id", (f"t:{self.message}", CHAT, self.message)).fetchone()[0]
        face = self.db.execute(
            "INSERT INTO face_embeddings (topic_id, embedding, source_chat_id, source_message_id, "
            "quality_score, media_item_id, state, assigned_by, low_quality) VALUES "
            "(%s, %s, %s, %s, 0.9, %s, %s, %s, FALSE) RETURNING id",
            (person, np.asarray(vector, np.float32), CHAT, self.message, media,
             "assigned" if person else "pending", by if person else None)).fetchone()[0]
        if post:
            self.db.execute(
                "INSERT INTO uploaded_media (topic_id, media_item_id, source_chat_id, source_message_id, "
                "status, uploaded_message_id, random_id) VALUES (%s, %s, %s, %s, %s, %s, 1)",
                (person, media, CHAT, self.message, post, 500 + self.message if post == "posted" else None))
        return face, media


def snapshot(db) -> tuple:
    return tuple(db.execute(q).fetchall() for q in (
        "SELECT id, topic_id, state, assigned_by FROM face_embeddings ORDER BY id",
        "SELECT id, topic_id, media_item_id, status FROM uploaded_media ORDER BY id",
        "SELECT id, action, payload FROM dashboard_actions ORDER BY id",
        "SELECT id, label, label_is_manual, hidden, cover_face_id, cover_is_manual FROM telegram_topics ORDER BY id",
        "SELECT face_id, topic_id FROM face_rejections ORDER BY face_id"))


def faces_of(db, person: int) -> set[int]:
    return {r[0] for r in db.execute("SELECT id FROM face_embeddings WHERE topic_id = %s", (person,))}


def test_recluster_splits_a_chained_person_and_keeps_the_operators_facts(db, lfw):
    a, b, c, d, e = lfw[:5]
    arch = Archive(db)
    chained = arch.person(topic=9001)
    a_faces = [arch.face(v, chained, post="posted") for v in a[:12]]
    b_faces = [arch.face(v, chained, post="posted" if k % 2 else "pending") for k, v in enumerate(b[:8])]
    # Named, with a face the operator put there and a manual cover: an operator's person.
    named = arch.person("Cee", topic=9002)
    c_faces = [arch.face(v, named, post="posted") for v in c[:6]]
    placed, _ = arch.face(c[6], named, by="operator", post="posted")
    db.execute("UPDATE telegram_topics SET cover_face_id = %s, cover_is_manual = TRUE WHERE id = %s",
               (c_faces[0][0], named))
    # Hidden (impure, but the operator hid it: left alone).
    hidden = arch.person(topic=9003, hidden=True)
    hidden_faces = {arch.face(v, hidden)[0] for v in d[:4] + e[:2]}
    # The operator moved one of A's faces out of the chained person: it must not come back.
    rejected, _ = arch.face(a[12], None)
    db.execute("INSERT INTO face_rejections (face_id, topic_id) VALUES (%s, %s)", (rejected, chained))
    params = MatchParams.for_engine("dlib")

    before = snapshot(db)
    dry = recluster.recluster(db, params, dry_run=True)
    assert snapshot(db) == before, "a dry run changes nothing"
    assert dry.dry_run and "Dry run" in str(dry)

    report = recluster.recluster(db, params)
    assert (report.moved, report.left, report.deleted_posts, report.cancelled_posts, report.due_posts) == \
        (dry.moved, dry.left, dry.deleted_posts, dry.cancelled_posts, dry.due_posts)
    # A's faces keep the chained person (its topic, its posts); B's are a new person. (A face
    # that does not agree with its person as a whole under today's rules waits in the pool.)
    kept = faces_of(db, chained)
    [new] = report.created
    in_new = faces_of(db, new)
    assert len({f for f, _ in a_faces} & kept) >= 10 and len({f for f, _ in b_faces} & in_new) >= 6
    assert not {f for f, _ in b_faces} & kept and not {f for f, _ in a_faces} & in_new
    states = dict(db.execute("SELECT id, state FROM face_embeddings").fetchall())
    assert all(states[f] == "pending" for f, _ in a_faces + b_faces if f not in kept | in_new)
    assert f"#{chained}" in "\n".join(report.persons)
    # Telegram: the posted messages of every photo that left the chained person are deleted from
    # its topic, its unsent posts cancelled, and the new person's photos are due in its topic.
    left = sorted(m for f, m in a_faces + b_faces if f not in kept)
    posted = db.execute("SELECT id FROM uploaded_media WHERE topic_id = %s AND media_item_id = ANY(%s) "
                        "AND uploaded_message_id IS NOT NULL ORDER BY id", (chained, left)).fetchall()
    assert db.execute("SELECT action, payload FROM dashboard_actions").fetchall() == [
        ("delete_posts", {"person_id": chained, "uploaded_media_ids": [r[0] for r in posted]})]
    assert report.deleted_posts == len(posted) and report.cancelled_posts == 4
    assert dict(db.execute("SELECT media_item_id, status FROM uploaded_media WHERE topic_id = %s",
                           (new,)).fetchall()) == {m: "pending" for f, m in b_faces if f in in_new}
    assert report.due_posts == len(in_new)
    # The operator's facts.
    after = snapshot(db)
    assert after[3][named - 1] == before[3][named - 1] and after[4] == before[4]
    assert placed in faces_of(db, named) and faces_of(db, hidden) == hidden_faces
    assert rejected not in faces_of(db, chained)
    # Healed is healed: a second run moves nothing and queues nothing more.
    again = recluster.recluster(db, params)
    assert (again.moved, again.left, again.joined, again.created, again.due_posts) == (0, 0, 0, [], 0)
    assert snapshot(db) == after


def test_an_interrupted_recluster_leaves_nothing_behind(db, lfw, monkeypatch):
    a, b = lfw[:2]
    arch = Archive(db)
    chained = arch.person(topic=9001)
    for v in a[:6] + b[:6]:
        arch.face(v, chained, post="posted")
    before = snapshot(db)

    def crash(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(recluster, "_person_lines", crash)  # after every write, before the commit
    with pytest.raises(KeyboardInterrupt):
        recluster.recluster(db, MatchParams.for_engine("dlib"))
    assert snapshot(db) == before


def test_replay_on_numbers_keeps_operator_faces_and_rejections():
    """recluster_replay alone: two tight groups chained in one person split; a fixed face stays."""
    rng = np.random.default_rng(0)
    centre_a, centre_b = rng.normal(size=128), rng.normal(size=128)

    def near(c):
        v = c / np.linalg.norm(c) + rng.normal(scale=0.012, size=128)
        return (v / np.linalg.norm(v)).astype(np.float32)

    faces = [StoredFace(k + 1, k + 1, None, False, near(centre_a if k < 6 else centre_b), 7,
                        "assigned", fixed=(k == 9)) for k in range(10)]
    faces.append(StoredFace(11, 11, None, False, near(centre_a), None, "pending", False, frozenset({7})))
    out = replay(faces, Thresholds.from_match(MatchParams.for_engine("dlib")))
    # B (faces 7-10) holds the operator's face 10: B is person 7; A is a new (provisional) person.
    assert {out[k].person for k in (7, 8, 9, 10)} == {7}
    assert len({out[k].person for k in range(1, 7)}) == 1 and out[1].person < 0
    assert out[11].person == out[1].person  # the rejected face may join A, never 7


def test_main_recluster_dry_run_then_for_real(db, dlib_db, lfw, clean_env, tmp_path, capsys):
    import main

    params = psycopg.conninfo.conninfo_to_dict(dlib_db)
    for name, value in {"POSTGRES_HOST": params["host"], "POSTGRES_DB": params["dbname"],
                        "POSTGRES_USER": params["user"], "POSTGRES_PASSWORD": "unused-with-trust-auth",
                        "FACE_ENGINE": "dlib", "DATA_DIR": str(tmp_path / "data")}.items():
        clean_env.setenv(name, value)
    a, b = lfw[:2]
    arch = Archive(db)
    chained = arch.person(topic=9001)
    for v in a[:6] + b[:6]:
        arch.face(v, chained, post="posted")
    before = snapshot(db)
    env = ["--env-file", str(tmp_path / "none.env")]
    assert main.main(env + ["recluster", "--dry-run"]) == 0
    assert "Dry run: nothing was changed" in capsys.readouterr().out
    assert snapshot(db) == before
    assert main.main(env + ["recluster"]) == 0
    out = capsys.readouterr().out
    assert "Reclustered:" in out and f"#{chained}" in out
    assert snapshot(db) != before
