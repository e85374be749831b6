"""The daemon's scheduled look at persons (suggestions.py, purity.py): merge offers ranked by
agreeing faces, never for a pair seen together in one photo; split offers for a person whose
faces form two groups, accepted through the operator's own move. On numbers, and on a real
PostgreSQL with real dlib faces of faces-lfw (tests/lfw_dlib_subset.npz)."""

from __future__ import annotations

import numpy as np

import purity
import suggestions
from identity_matcher import MatchParams
from test_recluster import Archive, db, faces_of, lfw  # noqa: F401

PARAMS = MatchParams.for_engine("dlib")


def cluster(rng, n: int, spread: float = 0.012) -> np.ndarray:
    centre = rng.normal(size=128)
    v = centre / np.linalg.norm(centre) + rng.normal(scale=spread, size=(n, 128))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


# --- on numbers ------------------------------------------------------------------------------------


def test_pairs_are_ranked_by_agreeing_faces_not_by_one_close_pair():
    rng = np.random.default_rng(1)
    a = cluster(rng, 10)
    b = cluster(rng, 6)
    stray = b[:1] * 0.2 + a[:1] * 0.98    # one face of person 3 very close to one of person 1
    stray /= np.linalg.norm(stray)
    faces = np.concatenate([a[:5], a[5:], b, stray])
    person = np.array([1] * 5 + [2] * 5 + [3] * 6 + [3])
    found = suggestions.agreements(person, faces, PARAMS.similarity_threshold, set())
    assert [(p.person_a, p.person_b) for p in found][0] == (1, 2)
    assert found[0].agreeing == 10 and found[0].faces == 10
    assert all(p.agreeing < 10 for p in found[1:])
    # A pair seen together in a photo is never offered.
    assert (1, 2) not in {(p.person_a, p.person_b) for p in suggestions.agreements(
        person, faces, PARAMS.similarity_threshold, {(1, 2)})}


def test_a_person_of_two_groups_is_split_and_a_pure_one_is_not():
    rng = np.random.default_rng(2)
    two = np.concatenate([cluster(rng, 9), cluster(rng, 4)])
    split = purity.split_groups(two, PARAMS.similarity_threshold, 3)
    assert split is not None and sorted(split.smaller) == [9, 10, 11, 12]
    assert split.linkage < PARAMS.similarity_threshold
    assert purity.split_groups(cluster(rng, 13), PARAMS.similarity_threshold, 3) is None
    assert purity.split_groups(two[:5], PARAMS.similarity_threshold, 3) is None  # too few faces


# --- on PostgreSQL ---------------------------------------------------------------------------------


async def test_split_offered_accepted_through_the_operators_move(pool, db, lfw):  # noqa: F811
    a, b, c = lfw[:3]
    arch = Archive(db)
    chained = arch.person(topic=9001)
    a_faces = [arch.face(v, chained, post="posted") for v in a[:9]]
    b_faces = [arch.face(v, chained, post="posted") for v in b[:5]]
    pure = arch.person(topic=9002)
    for v in c[:8]:
        arch.face(v, pure)
    async with pool.connection() as conn:
        assert await suggestions.refresh_split_suggestions(conn, PARAMS) == 1
    [(suggestion, person, face_ids)] = db.execute(
        "SELECT id, person_id, face_ids FROM split_suggestions WHERE status = 'open'").fetchall()
    assert person == chained and set(face_ids) == {f for f, _ in b_faces}
    new = purity.accept_split_suggestion(db, suggestion)
    assert faces_of(db, new) == {f for f, _ in b_faces}
    assert faces_of(db, chained) == {f for f, _ in a_faces}
    # As the operator's move: "not this person" recorded, B's posts withdrawn and due anew.
    assert db.execute("SELECT count(*) FROM face_rejections WHERE topic_id = %s",
                      (chained,)).fetchone() == (5,)
    [(payload,)] = db.execute("SELECT payload FROM dashboard_actions WHERE action = 'delete_posts'").fetchall()
    assert payload["person_id"] == chained and len(payload["uploaded_media_ids"]) == 5
    assert db.execute("SELECT count(*) FROM uploaded_media WHERE topic_id = %s AND status = 'pending'",
                      (new,)).fetchone() == (5,)
    # Pure now: the next pass offers nothing; a rejected offer is not made again.
    async with pool.connection() as conn:
        assert await suggestions.refresh_split_suggestions(conn, PARAMS) == 0
    chained2 = arch.person()
    for v in a[9:17] + b[5:9]:
        arch.face(v, chained2)
    async with pool.connection() as conn:
        assert await suggestions.refresh_split_suggestions(conn, PARAMS) == 1
    [(second,)] = db.execute("SELECT id FROM split_suggestions WHERE status = 'open'").fetchall()
    purity.reject_split_suggestion(db, second)
    async with pool.connection() as conn:
        assert await suggestions.refresh_split_suggestions(conn, PARAMS) == 0


async def test_merge_pass_offers_agreeing_pairs_never_a_pair_seen_together(pool, db, lfw):  # noqa: F811
    a, b = lfw[:2]
    arch = Archive(db)
    first, second, third, stranger = arch.person(), arch.person(), arch.person(), arch.person()
    for person, faces in ((first, a[:6]), (second, a[6:12]), (third, a[12:18]), (stranger, b[:5])):
        for v in faces:
            arch.face(v, person)
    # One person, three times; but `second` and `third` appear in one photo: never offered.
    face, media = arch.face(a[18], second)
    other, _ = arch.face(a[19], third)
    db.execute("UPDATE face_embeddings SET media_item_id = %s WHERE id = %s", (media, other))
    # An offer made while matching from one close pair, that the pass does not find: withdrawn.
    db.execute("INSERT INTO merge_suggestions (person_a, person_b, score) VALUES (%s, %s, 0.95)",
               (first, stranger))
    await suggestions.Suggestions(pool, PARAMS, interval=3600).sweep()   # the daemon's component
    rows = db.execute("SELECT person_a, person_b, agreeing, faces FROM merge_suggestions "
                      "WHERE status = 'open' ORDER BY agreeing DESC").fetchall()
    assert sorted(r[:2] for r in rows) == [(first, second), (first, third)]
    assert all(r[2] >= 10 and r[3] == 13 for r in rows)
