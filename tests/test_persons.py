"""The operator's corrections (persons.py) and how matching respects them afterwards.

Real PostgreSQL, real dlib faces of tests/faces; the corrections run on a plain sync
connection as the dashboard's would, the matching on the async pool as the daemon's.
"""

from __future__ import annotations


import psycopg
import pytest

import persons
from persons import CorrectionError
from test_identity_matcher import (biden, blend_of, dlib_matcher, due, labelled, make_person,  # noqa: F401
                                   make_split, match, obama, splitting_matcher)


@pytest.fixture
def db(dlib_db):
    """A sync connection, as the dashboard's pool hands out."""
    with psycopg.connect(dlib_db, autocommit=True) as conn:
        yield conn


def actions(db) -> list[tuple[str, dict]]:
    return db.execute("SELECT action, payload FROM dashboard_actions ORDER BY id").fetchall()


def posts(db, person: int) -> dict[int, tuple[str, str | None]]:
    """{media item: (status, last_error)} of a person's outbox rows."""
    return {m: (s, e) for m, s, e in db.execute(
        "SELECT media_item_id, status, last_error FROM uploaded_media WHERE topic_id = %s", (person,))}


def face_ids_of(db, person: int) -> set[int]:
    return {r[0] for r in db.execute("SELECT id FROM face_embeddings WHERE topic_id = %s", (person,))}


async def obama_person(pool, obama, with_04: bool = True):  # noqa: F811
    """Obama from barack_obama_01-03, plus _04 (which joins at 0.922); returns (person, face of 04,
    media item of 04)."""
    matcher = dlib_matcher()
    person = await make_person(pool, matcher, [obama["01"], obama["02"], obama["03"]])
    if not with_04:
        return person, None, None
    media, result = await match(pool, matcher, [obama["04"]])
    assert result.faces[0].person_id == person
    return person, result.faces[0].face_id, media


# --- rename ------------------------------------------------------------------------------------


async def test_rename_names_the_person_and_its_topic(pool, db, obama):
    person, _, _ = await obama_person(pool, obama, with_04=False)
    persons.rename_person(db, person, "  Barack   Obama ")
    assert db.execute("SELECT label, label_is_manual FROM telegram_topics WHERE id = %s",
                      (person,)).fetchone() == ("Barack Obama", True)
    assert actions(db) == [("rename_topic", {"person_id": person, "title": "Barack Obama"})]
    persons.rename_person(db, person, "Барак Обама")  # 21 bytes of UTF-8: fine
    with pytest.raises(CorrectionError, match="128 bytes"):
        persons.rename_person(db, person, "Я" * 65)  # 130 bytes
    with pytest.raises(CorrectionError, match="empty"):
        persons.rename_person(db, person, "   ")
    with pytest.raises(CorrectionError, match="does not exist"):
        persons.rename_person(db, 424242, "Nobody")


# --- faces out of a person ---------------------------------------------------------------------


async def test_a_face_moved_out_is_never_matched_back(pool, db, obama):
    person, face_04, media_04 = await obama_person(pool, obama)
    persons.unassign_faces(db, [face_04])
    assert face_04 not in face_ids_of(db, person)
    assert db.execute("SELECT state FROM face_embeddings WHERE id = %s", (face_04,)).fetchone() == ("pending",)
    # Its post was not sent yet: cancelled.
    assert posts(db, person)[media_04] == ("cancelled", "face moved out of this person")

    # The Situation Room face joins Obama, and pending faces near it are decided again; _04
    # (0.934 to it) would join too, but the operator said it is not this person.
    _, result = await match(pool, dlib_matcher(), [obama["room"]])
    assert result.faces[0].person_id == person
    assert face_04 not in face_ids_of(db, person)
    # The same face again in another photo looks more like the rejected face than like any face
    # of the person: review, not a silent join.
    _, result = await match(pool, dlib_matcher(), [obama["04"]])
    assert result.faces[0].state == "review"
    assert face_04 not in face_ids_of(db, person)


async def test_moving_a_posted_face_out_asks_telegram_to_delete_the_post(pool, db, obama):
    person, face_04, media_04 = await obama_person(pool, obama)
    db.execute("""UPDATE uploaded_media SET status = 'posted', uploaded_message_id = 77,
                  uploaded_at = now() WHERE topic_id = %s AND media_item_id = %s""", (person, media_04))
    [(row_id,)] = db.execute("SELECT id FROM uploaded_media WHERE media_item_id = %s", (media_04,))
    other = persons.move_faces_to_new_person(db, [face_04])
    assert actions(db) == [("delete_posts", {"person_id": person, "uploaded_media_ids": [row_id]})]
    assert posts(db, person)[media_04] == ("posted", None)  # until the daemon has deleted it
    assert posts(db, other) == {media_04: ("pending", None)}
    assert face_ids_of(db, other) == {face_04}
    assert db.execute("SELECT label FROM telegram_topics WHERE id = %s", (other,)).fetchone() == (
        f"Person {other}",)


async def test_a_split_off_face_keeps_its_new_person(pool, db, obama):
    person, face_04, _ = await obama_person(pool, obama)
    other = persons.move_faces_to_new_person(db, [face_04])
    # The same face in a new photo goes with the split-off face, not back to the old person.
    media, result = await match(pool, dlib_matcher(), [obama["04"]])
    assert (result.faces[0].state, result.faces[0].person_id) == ("duplicate", other)
    assert result.due == [(other, media)]
    _, result = await match(pool, dlib_matcher(), [obama["room"]])
    assert result.faces[0].person_id == person
    assert face_ids_of(db, other) == {face_04}


async def test_unnamed_empty_persons_dissolve_named_ones_never_do(pool, db, obama):
    person, face_04, _ = await obama_person(pool, obama)
    everything = sorted(face_ids_of(db, person))
    persons.rename_person(db, person, "Barack Obama")
    other = persons.move_faces_to_new_person(db, everything)
    # Named: stays, empty, until the operator decides.
    assert db.execute("SELECT embedding_count, cover_face_id FROM telegram_topics WHERE id = %s",
                      (person,)).fetchone() == (0, None)
    # Unnamed, no topic, nothing posted: gone once its faces are.
    persons.move_faces(db, everything, person)
    assert db.execute("SELECT count(*) FROM telegram_topics WHERE id = %s", (other,)).fetchone() == (0,)
    assert face_ids_of(db, person) == set(everything)
    # Moving them back lifted the operator's earlier "not this person".
    assert db.execute("SELECT count(*) FROM face_rejections WHERE topic_id = %s", (person,)).fetchone() == (0,)
    # A person whose topic exists is kept even when emptied (its topic and posts are real).
    db.execute("UPDATE telegram_topics SET topic_id = 5001 WHERE id = %s", (person,))
    db.execute("UPDATE telegram_topics SET label_is_manual = FALSE WHERE id = %s", (person,))
    third = persons.move_faces_to_new_person(db, everything)
    assert db.execute("SELECT count(*) FROM telegram_topics WHERE id IN (%s, %s)",
                      (person, third)).fetchone() == (2,)


async def test_dismissed_faces_leave_matching(pool, db, obama):
    person, face_04, media_04 = await obama_person(pool, obama)
    persons.dismiss_faces(db, [face_04])
    assert db.execute("SELECT state, topic_id FROM face_embeddings WHERE id = %s",
                      (face_04,)).fetchone() == ("dismissed", None)
    await match(pool, dlib_matcher(), [obama["room"]])  # cascades over pending faces only
    assert db.execute("SELECT state FROM face_embeddings WHERE id = %s", (face_04,)).fetchone() == ("dismissed",)
    with pytest.raises(CorrectionError, match="no such faces"):
        persons.dismiss_faces(db, [999999])


# --- merge -------------------------------------------------------------------------------------


async def test_merged_persons_stay_merged(pool, db, obama):
    first, second = await make_split(pool, obama)
    [(suggestion,)] = db.execute("SELECT id FROM merge_suggestions").fetchall()
    second_faces = face_ids_of(db, second)
    second_media = set(posts(db, second))
    # One of the absorbed person's posts went out already; the others are still due.
    posted = sorted(second_media)[0]
    db.execute("""UPDATE uploaded_media SET status = 'posted', uploaded_message_id = 90,
                  uploaded_at = now() WHERE topic_id = %s AND media_item_id = %s""", (second, posted))
    persons.rename_person(db, second, "Barack Obama")

    survivor = persons.accept_merge_suggestion(db, suggestion)
    # The named one survives by default.
    assert survivor == second
    absorbed = first
    assert db.execute("SELECT merged_into, embedding_count FROM telegram_topics WHERE id = %s",
                      (absorbed,)).fetchone() == (survivor, 0)
    assert second_faces < face_ids_of(db, survivor) and len(face_ids_of(db, survivor)) == 4
    # The absorbed person's posts not sent are cancelled; everything it had is due in the survivor.
    assert {s for s, _ in posts(db, absorbed).values()} == {"cancelled"}
    assert {m for m, (s, _) in posts(db, survivor).items() if s in ("pending", "posted")} == (
        second_media | set(posts(db, absorbed)))
    assert posts(db, survivor)[posted] == ("posted", None)  # not posted twice
    assert db.execute("SELECT status FROM merge_suggestions WHERE id = %s", (suggestion,)).fetchone() == ("accepted",)
    assert actions(db)[-1] == ("merge_persons", {
        "survivor_id": survivor, "absorbed_id": absorbed, "title": "→ merged into Barack Obama",
        "note": "Merged into Barack Obama: its posts continue there."})

    # Later faces of the identity go to the survivor, never to the absorbed person; no pass
    # offers the pair again; corrections of the absorbed person are refused.
    for name in ("04", "05", "comp"):
        _, result = await match(pool, dlib_matcher(), [obama[name]])
        assert result.faces[0].person_id in (survivor, None)
    async with pool.connection() as conn:
        await dlib_matcher().refresh_merge_suggestions(conn)
    assert db.execute("SELECT count(*) FROM merge_suggestions WHERE status = 'open'").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM face_embeddings WHERE topic_id = %s", (absorbed,)).fetchone() == (0,)
    assert {s for s, _ in posts(db, absorbed).values()} == {"cancelled"}
    with pytest.raises(CorrectionError, match="merged into"):
        persons.rename_person(db, absorbed, "Someone")
    with pytest.raises(CorrectionError, match="already accepted"):
        persons.reject_merge_suggestion(db, suggestion)


async def test_an_unnamed_survivor_takes_the_absorbed_name(pool, db, obama):
    first, second = await make_split(pool, obama)
    persons.rename_person(db, second, "Barack Obama")
    persons.merge_persons(db, first, second)
    assert db.execute("SELECT label, label_is_manual FROM telegram_topics WHERE id = %s",
                      (first,)).fetchone() == ("Barack Obama", True)
    assert ("rename_topic", {"person_id": first, "title": "Barack Obama"}) in actions(db)
    with pytest.raises(CorrectionError, match="itself"):
        persons.merge_persons(db, first, first)


async def test_a_rejected_suggestion_is_never_offered_again(pool, db, obama):
    first, second = await make_split(pool, obama)
    [(suggestion,)] = db.execute("SELECT id FROM merge_suggestions").fetchall()
    persons.reject_merge_suggestion(db, suggestion)
    # A new face close to both, and a full pass, find the pair again: the answer stands.
    await match(pool, splitting_matcher(), [obama["comp"]])
    async with pool.connection() as conn:
        await dlib_matcher().refresh_merge_suggestions(conn)
    assert db.execute("SELECT id, status FROM merge_suggestions").fetchall() == [(suggestion, "rejected")]


# --- hide, cover, review ----------------------------------------------------------------------


async def test_a_hidden_person_gets_no_posts_until_unhidden(pool, db, obama):
    person, _, _ = await obama_person(pool, obama)
    before = set(posts(db, person))
    persons.hide_person(db, person)
    assert {v for v in posts(db, person).values()} == {("cancelled", "person hidden")}
    # Its faces still find it (it is not born again), but nothing becomes due.
    media, result = await match(pool, dlib_matcher(), [obama["room"]])
    assert result.faces[0].person_id == person and result.due == []
    persons.unhide_person(db, person)
    assert posts(db, person) == {m: ("pending", None) for m in before | {media}}
    assert [a for a, _ in actions(db)] == ["hide_person", "unhide_person"]


async def test_the_cover_is_the_best_face_unless_chosen(pool, db, obama):
    person, face_04, _ = await obama_person(pool, obama)
    best = db.execute("""SELECT id FROM face_embeddings WHERE topic_id = %s
                         ORDER BY quality_score DESC LIMIT 1""", (person,)).fetchone()[0]
    cover = lambda: db.execute("SELECT cover_face_id, cover_is_manual FROM telegram_topics WHERE id = %s",  # noqa: E731
                               (person,)).fetchone()
    assert cover() == (best, False)
    persons.choose_cover(db, person, face_04)
    await match(pool, dlib_matcher(), [obama["room"]])
    assert cover() == (face_04, True)  # later faces never replace the operator's choice
    assert actions(db)[-1] == ("update_cover", {"person_id": person, "face_id": face_04})
    with pytest.raises(CorrectionError, match="not a face of person"):
        persons.choose_cover(db, person, 999999)
    persons.choose_cover(db, person, None)
    assert cover() == (best, False)


async def test_review_faces_are_assigned_or_dismissed_by_the_operator(pool, db, obama, biden):  # noqa: F811
    o, _, _ = await obama_person(pool, obama, with_04=False)
    b = await make_person(pool, dlib_matcher(), [biden["01"], biden["02"], biden["03"]])
    blends = [blend_of(obama["03"], biden["01"]), blend_of(obama["01"], biden["02"])]
    media_1, first = await match(pool, dlib_matcher(), [blends[0]])
    media_2, second = await match(pool, dlib_matcher(), [blends[1]])
    assert first.faces[0].state == second.faces[0].state == "review"
    review = [r[0] for r in db.execute("SELECT id FROM face_embeddings WHERE state = 'review' ORDER BY id")]
    persons.resolve_review(db, review[0], o)
    assert db.execute("SELECT state, topic_id, assigned_by FROM face_embeddings WHERE id = %s",
                      (review[0],)).fetchone() == ("assigned", o, "operator")
    assert (o, media_1) in await due(pool)
    persons.resolve_review(db, review[1], None)
    assert db.execute("SELECT state, topic_id FROM face_embeddings WHERE id = %s",
                      (review[1],)).fetchone() == ("dismissed", None)
    assert (o, media_2) not in await due(pool) and (b, media_2) not in await due(pool)
