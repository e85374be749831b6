"""IdentityMatcher on a real PostgreSQL with real dlib embeddings of tests/faces.

Every photo is one media item; `analysed_faces` (conftest) has run the real dlib engine over
them once per test run. The identities: Obama in 5 single photos, the composite and the
Situation Room; Biden in 3 single photos, the composite and the Situation Room; Harris, Collins
and 8 unnamed Situation Room people once each.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest

from conftest import FACES_DIR
from face_engines import box_iou
from identity_matcher import IdentityMatcher, MatchParams

OBAMA_PHOTOS = ["barack_obama_01.jpg", "barack_obama_02.jpg", "barack_obama_03.jpg",
                "barack_obama_04.jpg", "barack_obama_05_small_face.jpg"]
BIDEN_PHOTOS = ["joe_biden_01.jpg", "joe_biden_02.jpg", "joe_biden_03.jpg"]
COMPOSITE = "group_obama_biden_composite.jpg"
SITUATION_ROOM = "group_situation_room_2011.jpg"
_messages = itertools.count(1000)


# --- helpers (test_persons.py uses them too) -----------------------------------------------------


# The behaviour tests below (seeding, joining, review, duplicates, operator facts) were written
# around these 16 photos, where few faces per person make a loose person: Obama's 01-03 are
# 0.955 alike on average and barack_obama_04 is 0.914 like them (average linkage). They run at
# looser numbers than the engine's defaults (join 0.93, seed 0.945, cohesion slack 0.025, which
# are calibrated on the open set faces-lfw, see media_processor.ENGINES): join 0.91, seed 0.935,
# slack 0.06 from 3 faces on (01-03 are 0.965 alike, 04 is 0.914 like them). tests/test_matcher_scale.py checks the defaults at scale.
FIXTURE_THRESHOLDS = {"similarity_threshold": 0.91, "seed_threshold": 0.935, "cohesion_slack": 0.06,
                      "cohesion_full_size": 3}


def dlib_matcher(**overrides) -> IdentityMatcher:
    return IdentityMatcher(MatchParams.for_engine("dlib", **(FIXTURE_THRESHOLDS | overrides)))


async def new_media(pool, media_type: str = "photo") -> int:
    """A media item row, as the daemon makes one before analysing it."""
    message = next(_messages)
    async with pool.connection() as conn:
        row = await (await conn.execute(
            """INSERT INTO media_items (media_key, media_type, source_chat_id, source_message_id)
               VALUES (%s, %s, -1001234000001, %s) RETURNING id""",
            (f"photo:{message}", media_type, message))).fetchone()
    return row[0]


async def match(pool, matcher, faces, media_item_id: int | None = None):
    """Match `faces` as one media item in one transaction, as a worker does."""
    media_item_id = media_item_id or await new_media(pool)
    async with pool.connection() as conn, conn.transaction():
        return media_item_id, await matcher.assign(conn, media_item_id, faces)


async def fetch(pool, query: str, params=()) -> list[tuple]:
    async with pool.connection() as conn:
        return await (await conn.execute(query, params)).fetchall()


async def persons(pool) -> dict[int, set[int]]:
    """{person: {face ids}} of the persons that are not merged away."""
    rows = await fetch(pool, """SELECT t.id, f.id FROM telegram_topics t
                                LEFT JOIN face_embeddings f ON f.topic_id = t.id
                                WHERE t.merged_into IS NULL""")
    found: dict[int, set[int]] = {}
    for person, face in rows:
        found.setdefault(person, set())
        if face is not None:
            found[person].add(face)
    return found


async def due(pool) -> set[tuple[int, int]]:
    return set(await fetch(pool, """SELECT topic_id, media_item_id FROM uploaded_media
                                    WHERE status = 'pending'"""))


async def final_persons(pool, outcomes) -> list[int | None]:
    """The person of each face now (faces left pending at first may have founded a person
    later); a duplicate's person is the one it duplicated."""
    now = dict(await fetch(pool, "SELECT id, topic_id FROM face_embeddings"))
    return [o.person_id if o.face_id is None else now[o.face_id] for o in outcomes]


def blend_of(a, b):
    """A face halfway between two faces (a look-alike of both)."""
    blend = a.embedding + b.embedding
    return dataclasses.replace(a, embedding=(blend / np.linalg.norm(blend)).astype(np.float32))


def as_track(faces, track_id: int = 0):
    """The faces as one video track (one person within one video)."""
    return [dataclasses.replace(f, track_id=track_id, frame_time=float(i)) for i, f in enumerate(faces)]


@pytest.fixture(scope="session")
def labelled(analysed_faces, face_labels) -> dict[str, list[str]]:
    """{file: [identity of each detected face]}: named faces by the labels and face_regions.csv
    (the composite: Obama left, Biden right), every other face its own unnamed person."""
    regions: dict[str, list] = {}
    with open(FACES_DIR / "face_regions.csv", newline="") as f:
        for row in csv.DictReader(f):
            x, y, w, h = (float(row[k]) for k in "xywh")
            regions.setdefault(row["file"], []).append((row["identity"], (x, y, x + w, y + h)))
    result = {}
    for name, faces in analysed_faces.items():
        identities = []
        for i, face in enumerate(faces):
            if name == COMPOSITE:
                identities.append("barack_obama" if face.bbox[0] < 563 else "joe_biden")
            elif len(face_labels[name]) == 1 and len(faces) == 1:
                identities.append(face_labels[name][0])
            else:
                named = [who for who, box in regions.get(name, []) if box_iou(face.bbox, box) > 0.3]
                identities.append(named[0] if named else f"{Path(name).stem}_unnamed_{i}")
        result[name] = identities
    return result


def face_of(analysed_faces, labelled, name: str, identity: str):
    return analysed_faces[name][labelled[name].index(identity)]


def pairwise(truth: list[str], predicted: list[object]) -> tuple[float, float]:
    """Pairwise precision and recall; predicted None is a face alone."""
    tp = fp = fn = 0
    for (ta, pa), (tb, pb) in itertools.combinations(zip(truth, predicted), 2):
        same_pred = pa is not None and pa == pb
        if same_pred and ta == tb:
            tp += 1
        elif same_pred:
            fp += 1
        elif ta == tb:
            fn += 1
    return (tp / (tp + fp) if tp + fp else 1.0), (tp / (tp + fn) if tp + fn else 1.0)


# --- the whole set ------------------------------------------------------------------------------

# Issue 4's goals for the persons made from these photos: pairwise precision >= 0.99 (persons
# are pure) and recall >= 0.85, over every detected face (a face left pending or in review is a
# person of its own; a duplicate counts as the person it duplicates).
PRECISION_GOAL = 0.99
RECALL_GOAL = 0.85
# Measured (dlib, default thresholds, both orders): precision 1.000, recall 25/31 = 0.806. The
# 6 pairs missed are all those of the 37 px Obama face (barack_obama_05_small_face, quality
# 0.60, so low-quality: it may join at 0.94 but never seed). Its best similarity to another
# Obama face is 0.887 (0.898 to the centroid of his 6 other faces), while pairs of *different*
# people in different photos of this very set reach 0.903 (an unnamed Situation Room face and
# joe_biden_03) and 0.898 (barack_obama_04 and another unnamed one): a threshold low enough for
# that face would let such pairs join, so with dlib the recall goal is out of reach here at
# precision >= 0.99; it waits in the pending pool instead (see test_recall_goal_over_all_faces).
# Over the faces of at least 60 px (the size DESIGN.md's detection target is about) recall is
# 25/25 = 1.000.
RECALL_FLOOR = 0.80
MIN_FACE_PX = 60


def face_px(face) -> float:
    x1, y1, x2, y2 = face.bbox
    return min(x2 - x1, y2 - y1)


async def match_whole_set(pool, analysed_faces, labelled, order: str):
    """Every photo through the matcher, one media item each, in name order or reversed: the
    true identity, the face, and the final person of every detected face."""
    matcher = dlib_matcher()
    names = sorted(analysed_faces, reverse=order == "reversed")
    truth, faces, outcomes = [], [], []
    for name in names:
        if not analysed_faces[name]:
            continue
        _, result = await match(pool, matcher, analysed_faces[name])
        for outcome in result.faces:
            truth.append(labelled[name][outcome.index])
            faces.append(analysed_faces[name][outcome.index])
            outcomes.append(outcome)
    return truth, faces, await final_persons(pool, outcomes)


def test_pairwise_counts_every_pair():
    # 3 faces of a, 2 of b, 1 of c; predicted: a's split 2 + 1 (the third alone), b's merged
    # with c's face. True pairs: 3 (a) + 1 (b) = 4; found: 1 (a) + 1 (b); wrong: 2 (b-c).
    truth = ["a", "a", "a", "b", "b", "c"]
    predicted = [1, 1, None, 2, 2, 2]
    assert pairwise(truth, predicted) == (2 / 4, 2 / 4)
    assert pairwise(truth, [None] * 6) == (1.0, 0.0)
    assert pairwise(truth, [7] * 6) == (4 / 15, 1.0)


@pytest.mark.parametrize("order", ["sorted", "reversed"])
async def test_labelled_identities_come_out_pure_and_complete(pool, analysed_faces, labelled, order):
    truth, faces, predicted = await match_whole_set(pool, analysed_faces, labelled, order)
    assert len(truth) == 24  # every face dlib finds: 12 of the Situation Room's 13, 2 + 10 single faces
    precision, recall = pairwise(truth, predicted)
    big = [i for i, face in enumerate(faces) if face_px(face) >= MIN_FACE_PX]
    precision_big, recall_big = pairwise([truth[i] for i in big], [predicted[i] for i in big])
    print(f"order {order}: pairwise precision {precision:.3f}, recall {recall:.3f}; faces of "
          f">= {MIN_FACE_PX} px: precision {precision_big:.3f}, recall {recall_big:.3f}")
    assert precision >= PRECISION_GOAL and precision == 1.0
    assert recall >= RECALL_FLOOR
    assert recall_big >= RECALL_GOAL
    # Exactly two persons: Obama and Biden. Harris, Collins, Clinton and the unnamed people
    # were each seen once and make none.
    by_identity = {}
    for who, person in zip(truth, predicted):
        if person is not None:
            by_identity.setdefault(who, set()).add(person)
    assert set(by_identity) == {"barack_obama", "joe_biden"}
    assert all(len(p) == 1 for p in by_identity.values())
    assert len(await persons(pool)) == 2
    # Every media item that shows a person is due in that person's topic, once.
    rows = await fetch(pool, "SELECT topic_id, media_item_id, status FROM uploaded_media")
    assert all(status == "pending" for _, _, status in rows)
    assert len(rows) == len({(t, m) for t, m, _ in rows})
    # Obama and Biden are at most 0.876 alike with dlib: not offered as a merge.
    assert await fetch(pool, "SELECT * FROM merge_suggestions") == []


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "dlib: the 37 px Obama face is at most 0.887 like his other faces while different people "
    "in different photos of the set reach 0.903, so recall over all faces is 25/31 = 0.806 "
    "< 0.85 (see RECALL_FLOOR)"))
async def test_recall_goal_over_all_faces(pool, analysed_faces, labelled):
    """Issue 4's recall goal over every face, small ones included. Expected to fail with dlib
    (strict: once it passes, e.g. with a better engine, the xfail must go)."""
    truth, _, predicted = await match_whole_set(pool, analysed_faces, labelled, "sorted")
    precision, recall = pairwise(truth, predicted)
    assert precision >= PRECISION_GOAL
    assert recall >= RECALL_GOAL


# --- seeding ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def obama(analysed_faces, labelled) -> dict[str, object]:
    """Obama's faces by short name: 01-05, comp (the composite), room (the Situation Room)."""
    faces = {f"{i:02d}": analysed_faces[name][0] for i, name in enumerate(OBAMA_PHOTOS, start=1)}
    faces["comp"] = face_of(analysed_faces, labelled, COMPOSITE, "barack_obama")
    faces["room"] = face_of(analysed_faces, labelled, SITUATION_ROOM, "barack_obama")
    return faces


@pytest.fixture(scope="session")
def biden(analysed_faces, labelled) -> dict[str, object]:
    faces = {f"{i:02d}": analysed_faces[name][0] for i, name in enumerate(BIDEN_PHOTOS, start=1)}
    faces["comp"] = face_of(analysed_faces, labelled, COMPOSITE, "joe_biden")
    faces["room"] = face_of(analysed_faces, labelled, SITUATION_ROOM, "joe_biden")
    return faces


async def make_person(pool, matcher, faces) -> int:
    """Feed single-face photos until their person is born; return it."""
    for face in faces:
        _, result = await match(pool, matcher, [face])
    assert result.created_persons, "expected the last photo to found a person"
    return result.created_persons[0]


async def test_a_stranger_seen_once_makes_no_person(pool, analysed_faces):
    media_item, result = await match(pool, dlib_matcher(), analysed_faces["kamala_harris_01.jpg"])
    [outcome] = result.faces
    assert (outcome.state, outcome.person_id) == ("pending", None)
    assert outcome.face_id is not None  # waits in the pending pool
    assert result.due == [] and result.created_persons == []
    assert await persons(pool) == {}
    assert await fetch(pool, "SELECT state, topic_id, media_item_id FROM face_embeddings") == [
        ("pending", None, media_item)]


async def test_two_sightings_are_not_enough(pool, obama):
    matcher = dlib_matcher()
    for name in ("01", "02"):
        _, result = await match(pool, matcher, [obama[name]])
        assert result.faces[0].state == "pending"
    assert await persons(pool) == {} and await due(pool) == set()


async def test_faces_of_one_video_count_as_one_media_item(pool, obama):
    """Three faces of one track are one sighting place: no person until another media item
    shows the same face; then the person is born with all of them and both are due."""
    matcher = dlib_matcher()
    video, result = await match(pool, matcher, as_track([obama["01"], obama["02"], obama["04"]]))
    assert [o.state for o in result.faces] == ["pending"] * 3
    assert await persons(pool) == {}

    photo, result = await match(pool, matcher, [obama["03"]])
    [outcome] = result.faces
    assert outcome.state == "assigned" and outcome.new_person
    person = outcome.person_id
    assert result.created_persons == [person]
    # All four faces: the three founders and the track-mate (04 is too unlike 03 to found, but
    # it is the same person as its track).
    assert len((await persons(pool))[person]) == 4
    assert set(result.due) == {(person, video), (person, photo)}
    assert await due(pool) == {(person, video), (person, photo)}


async def test_the_third_sighting_makes_a_person_and_posts_all_three(pool, obama):
    matcher = dlib_matcher()
    media = []
    for name in ("01", "02", "03"):
        item, result = await match(pool, matcher, [obama[name]])
        media.append(item)
    [outcome] = result.faces
    assert outcome.new_person and outcome.state == "assigned"
    assert outcome.similarity is not None and outcome.similarity > 0.935
    assert await due(pool) == {(outcome.person_id, m) for m in media}
    label, count, cover, last_seen = (await fetch(pool, """
        SELECT label, embedding_count, cover_face_id, last_seen FROM telegram_topics"""))[0]
    assert label == f"Person {outcome.person_id}"
    assert count == 3 and last_seen is not None
    # The cover is the best face: barack_obama_01, quality 0.98.
    assert (await fetch(pool, "SELECT media_item_id FROM face_embeddings WHERE id = %s",
                        (cover,)))[0][0] == media[0]


async def test_low_quality_faces_join_but_never_found(pool, obama):
    matcher = dlib_matcher()
    poor = {k: dataclasses.replace(f, quality=0.3) for k, f in obama.items()}
    for name in ("01", "02", "03"):
        _, result = await match(pool, matcher, [poor[name]])
        assert result.faces[0].state == "pending"
    assert await persons(pool) == {}
    assert {r[0] for r in await fetch(pool, "SELECT low_quality FROM face_embeddings")} == {True}

    person = await make_person(pool, matcher, [obama["01"], obama["02"], obama["03"]])
    # The Situation Room face is 0.955 like Obama's faces: it joins even when poor (>= 0.94) …
    _, result = await match(pool, matcher, [poor["room"]])
    assert (result.faces[0].state, result.faces[0].person_id) == ("assigned", person)
    # … but barack_obama_04 (0.922 at best) joins only as a good face (>= 0.92), not as a poor one.
    _, result = await match(pool, matcher, [poor["04"]])
    assert result.faces[0].state == "pending"
    _, result = await match(pool, matcher, [obama["04"]])
    assert (result.faces[0].state, result.faces[0].person_id) == ("assigned", person)


async def test_pending_faces_join_when_their_person_is_born(pool, obama):
    """barack_obama_04 arrives first and waits; it joins once the person exists."""
    matcher = dlib_matcher()
    early, result = await match(pool, matcher, [obama["04"]])
    first = result.faces[0].face_id
    person = await make_person(pool, matcher, [obama["01"], obama["02"], obama["03"]])
    assert first in (await persons(pool))[person]
    assert (person, early) in await due(pool)


# --- one media item, distinct persons ----------------------------------------------------------


async def test_two_faces_of_one_photo_never_share_a_person(pool, obama):
    matcher = dlib_matcher()
    person = await make_person(pool, matcher, [obama["01"], obama["02"], obama["03"]])
    # A photo showing two Obama faces (a mirror, a poster): only the closer one joins.
    _, result = await match(pool, matcher, [obama["04"], obama["room"]])
    by_index = {o.index: o for o in result.faces}
    assert by_index[1].person_id == person and by_index[1].state == "assigned"
    assert by_index[0].person_id != person and by_index[0].state in ("pending", "review")


async def test_the_composite_splits_into_its_two_people(pool, obama, biden, analysed_faces, labelled):
    matcher = dlib_matcher()
    o = await make_person(pool, matcher, [obama["01"], obama["02"], obama["03"]])
    b = await make_person(pool, matcher, [biden["01"], biden["02"], biden["03"]])
    _, result = await match(pool, matcher, analysed_faces[COMPOSITE])
    people = {labelled[COMPOSITE][x.index]: x.person_id for x in result.faces}
    assert people == {"barack_obama": o, "joe_biden": b}


# --- concurrency ---------------------------------------------------------------------------------


async def test_two_workers_with_the_same_new_person_make_one(pool, obama):
    """Two photos of a person seen twice before, matched at the same moment by two workers
    (separate connections and transactions): one person, with all four faces."""
    matcher = dlib_matcher()
    seen = [(await match(pool, matcher, [obama[n]]))[0] for n in ("01", "02")]
    media_c, media_d = await new_media(pool), await new_media(pool)

    async def worker(face, media_item):
        async with pool.connection() as conn, conn.transaction():
            result = await matcher.assign(conn, media_item, [face])
            await asyncio.sleep(0.3)  # stay uncommitted while the other worker searches
        return result

    first, second = await asyncio.gather(worker(obama["03"], media_c), worker(obama["room"], media_d))
    assert len(first.created_persons + second.created_persons) == 1
    [(person, faces)] = (await persons(pool)).items()
    assert len(faces) == 4
    assert {first.faces[0].person_id, second.faces[0].person_id} == {person}
    assert await due(pool) == {(person, m) for m in [*seen, media_c, media_d]}


async def test_two_workers_adding_to_one_person_at_once_both_succeed(pool, obama):
    """Two photos of a known person, matched at the same moment on two connections: each
    transaction locks the person and then updates its counts. (Share locks taken by both and
    then upgraded would deadlock, and PostgreSQL would roll one of them back.)"""
    matcher = dlib_matcher()
    person = await make_person(pool, matcher, [obama[n] for n in ("01", "02", "03")])
    media = [await new_media(pool) for _ in range(4)]

    async def worker(face, media_item):
        async with pool.connection() as conn, conn.transaction():
            return await matcher.assign(conn, media_item, [face])

    results = await asyncio.gather(*(worker(obama[n], m) for n, m in zip(("04", "comp", "room", "04"), media)))
    assert [r.faces[0].person_id for r in results] == [person] * 4
    [count] = await fetch(pool, "SELECT embedding_count FROM telegram_topics WHERE id = %s", (person,))
    assert count[0] == len((await persons(pool))[person])


# --- duplicates, review --------------------------------------------------------------------------


async def test_the_same_photo_again_is_posted_but_not_stored_twice(pool, obama):
    matcher = dlib_matcher()
    person = await make_person(pool, matcher, [obama["01"], obama["02"], obama["03"]])
    faces_before = len((await persons(pool))[person])
    again, result = await match(pool, matcher, [obama["02"]])
    [outcome] = result.faces
    assert (outcome.state, outcome.person_id, outcome.face_id) == ("duplicate", person, None)
    assert result.due == [(person, again)]
    assert len((await persons(pool))[person]) == faces_before
    # barack_obama_03 and the composite's Obama are crops of one photo (0.999): one is stored.
    _, result = await match(pool, matcher, [obama["comp"]])
    assert (result.faces[0].state, result.faces[0].person_id) == ("duplicate", person)


async def test_near_identical_frames_of_a_track_are_stored_once(pool, obama):
    matcher = dlib_matcher()
    person = await make_person(pool, matcher, [obama["01"], obama["02"], obama["03"]])
    video, result = await match(pool, matcher, as_track([obama["room"], obama["room"], obama["04"]]))
    assert [o.state for o in result.faces] == ["assigned", "duplicate", "assigned"]
    assert {o.person_id for o in result.faces} == {person}
    assert result.due == [(person, video)]


async def test_a_face_between_two_persons_goes_to_review(pool, obama, biden):
    matcher = dlib_matcher()
    o = await make_person(pool, matcher, [obama["01"], obama["02"], obama["03"]])
    b = await make_person(pool, matcher, [biden["01"], biden["02"], biden["03"]])
    media_item, result = await match(pool, matcher, [blend_of(obama["03"], biden["01"])])
    [outcome] = result.faces
    assert outcome.state == "review" and outcome.person_id is None
    assert result.due == [] and (o, media_item) not in await due(pool)
    [(candidates,)] = await fetch(pool, "SELECT review_candidates FROM face_embeddings WHERE id = %s",
                                  (outcome.face_id,))
    assert {c["person_id"] for c in candidates} == {o, b}
    assert all(c["similarity"] >= 0.92 for c in candidates)


# --- merge suggestions ---------------------------------------------------------------------------


def splitting_matcher() -> IdentityMatcher:
    """Joins only near-identical faces (0.99) but founds persons from two faces at the usual
    seeding threshold: one identity comes out as two persons, as a real split would."""
    params = MatchParams.for_engine("dlib", min_faces=2)
    return IdentityMatcher(dataclasses.replace(params, similarity_threshold=0.99,
                                               low_quality_threshold=0.995))


async def make_split(pool, obama) -> tuple[int, int]:
    matcher = splitting_matcher()
    first = await make_person(pool, matcher, [obama["01"], obama["03"]])
    second = await make_person(pool, matcher, [obama["02"], obama["room"]])
    return first, second


async def test_a_split_person_is_offered_for_merging(pool, obama, biden):
    first, second = await make_split(pool, obama)
    assert first != second
    rows = await fetch(pool, "SELECT person_a, person_b, score, status FROM merge_suggestions")
    [(a, b, score, status)] = rows
    assert (a, b, status) == (min(first, second), max(first, second), "open")
    assert 0.95 < score < 0.99  # barack_obama_01 and _02: 0.968
    # A full pass finds the same pair and nothing else (Biden is no look-alike).
    await make_person(pool, dlib_matcher(), [biden["01"], biden["02"], biden["03"]])
    async with pool.connection() as conn:
        await dlib_matcher().refresh_merge_suggestions(conn)
    assert [r[:2] for r in await fetch(pool, "SELECT person_a, person_b FROM merge_suggestions")] == [(a, b)]


# The rules themselves, on numbers: tests/test_match_rules.py.


# --- parameters ----------------------------------------------------------------------------------


def test_params_come_from_settings_or_the_engine(clean_env):
    from config import load_settings
    params = MatchParams.from_settings(load_settings(env_file=None, face_engine="dlib"))
    assert (params.similarity_threshold, params.seed_threshold, params.min_faces) == (0.93, 0.945, 3)
    params = MatchParams.from_settings(load_settings(
        env_file=None, face_engine="insightface", similarity_threshold=0.6, min_faces_for_person=4))
    # The seed threshold is never below the join threshold.
    assert (params.similarity_threshold, params.seed_threshold, params.min_faces) == (0.6, 0.6, 4)
    assert params.margin == pytest.approx(0.04) and params.duplicate_similarity == 0.98


async def test_an_unknown_media_item_is_an_error(pool, obama):
    async with pool.connection() as conn:
        with pytest.raises(ValueError, match="media item 999999"):
            await dlib_matcher().assign(conn, 999999, [obama["01"]])
        assert (await dlib_matcher().assign(conn, 999999, [])).faces == []
