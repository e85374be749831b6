"""Undo of merges, moves and dismissals (undo.py), on the real filled archive: the database is
as it was before the change (persons, faces, covers, names, suggestions, "not this person"
facts, posts), and the requests for Telegram say what must be said and no more."""

from __future__ import annotations

import psycopg
import pytest

import persons as corrections_of_persons
import undo
from dashboard_pages import corrections
from dashboard_pages.audit import plain
from dashboard_pages.split import split_person
from test_dashboard import pick, biden, db, faces_of, persons, signed_in  # noqa: F401
from test_dashboard_support import filled_db, filled_template  # noqa: F401


def state(db) -> dict[str, list]:
    """Everything a correction can change, as comparable rows."""
    return {
        "persons": db.execute("""SELECT id, label, label_is_manual, hidden, merged_into, cover_face_id,
                                        cover_is_manual, embedding_count, message_count
                                 FROM telegram_topics ORDER BY id""").fetchall(),
        "faces": db.execute("""SELECT id, topic_id, state, assigned_by, match_similarity, review_candidates
                               FROM face_embeddings ORDER BY id""").fetchall(),
        "rejections": db.execute("SELECT face_id, topic_id FROM face_rejections ORDER BY 1, 2").fetchall(),
        "suggestions": db.execute("SELECT id, person_a, person_b, status, decided_at FROM merge_suggestions "
                                  "ORDER BY id").fetchall(),
        # a post an undo withdrew before it was sent stays as a cancelled row (the dashboard's role
        # never deletes posts): as good as never made
        "posts": db.execute("""SELECT id, topic_id, media_item_id, status, random_id, last_error
                               FROM uploaded_media
                               WHERE (status, last_error) IS DISTINCT FROM ('cancelled', 'withdrawn by an undo')
                               ORDER BY id""").fetchall(),
        "requests": db.execute("SELECT action, payload, status FROM dashboard_actions ORDER BY id").fetchall(),
    }


def change(db, fn, *args):
    with db.transaction():
        return undo.capture(db, fn.__name__, fn, *args)


def pending(db) -> list[tuple[str, dict]]:
    return db.execute("SELECT action, payload FROM dashboard_actions WHERE status = 'pending' ORDER BY id").fetchall()


def applied(db) -> None:
    """What the daemon would have done meanwhile: every request applied, every due post posted."""
    db.execute("UPDATE dashboard_actions SET status = 'done', applied_at = now() WHERE status = 'pending'")
    db.execute("""UPDATE uploaded_media SET status = 'posted', uploaded_message_id = 1000 + id, uploaded_at = now()
                  WHERE status = 'pending'""")


def test_undo_of_a_merge_in_the_dashboard_restores_everything(db):  # noqa: F811
    first, second = persons(db)["Person 1"], persons(db)["Person 2"]
    chosen = faces_of(db, second)[-1]
    db.execute("UPDATE telegram_topics SET cover_face_id = %s, cover_is_manual = TRUE WHERE id = %s", (chosen, second))
    db.execute("UPDATE telegram_topics SET label = 'Barack Obama', label_is_manual = TRUE WHERE id = %s", (second,))
    before = state(db)
    at = signed_in("person", person=str(first))
    at.selectbox(key=f"merge_other_{first}").select(second).run()
    at.radio(key=f"merge_keep_{first}").set_value(first).run()          # the unnamed one stays
    at.button(key=f"merge_go_{first}").click().run()
    assert db.execute("SELECT label FROM telegram_topics WHERE id = %s", (first,)).fetchone() == ("Barack Obama",)
    assert {a for a, _ in pending(db)} == {"merge_persons", "rename_topic", "update_cover"}
    [entry] = [b.key for b in at.button if (b.key or "").startswith("undo_flash_")]
    at.button(key=entry).click().run()
    assert at.success[0].value == "Undone: Merged «Barack Obama» into «Person 1»."
    # Telegram had not been told yet: nothing is left to tell it.
    assert state(db) == before
    assert db.execute("SELECT action, summary FROM dashboard_audit ORDER BY id").fetchall()[-1] == (
        "undo", "Undone: Merged «Barack Obama» into «Person 1».")
    # Once undone, the entry offers no undo again.
    at = signed_in("audit_log")
    assert not [b for b in at.button if (b.key or "").startswith("undo_")]


def test_undo_of_a_merge_telegram_has_seen_answers_it(db):  # noqa: F811
    first, second = persons(db)["Person 1"], persons(db)["Person 2"]
    db.execute("UPDATE telegram_topics SET label = 'Barack Obama', label_is_manual = TRUE, topic_id = 77 "
               "WHERE id = %s", (second,))
    db.execute("UPDATE telegram_topics SET topic_id = 76 WHERE id = %s", (first,))
    applied(db)
    before = state(db)
    _, record = change(db, corrections.merge_persons, first, second)
    new_posts = {r[0] for r in db.execute("SELECT id FROM uploaded_media WHERE topic_id = %s AND status = 'pending'",
                                          (first,))}
    assert new_posts                                          # Person 2's photos became due in Person 1's topic
    applied(db)
    done = undo.undo(db, record)
    assert not done["withdrawn"]
    assert pending(db) == [
        ("rename_topic", {"person_id": first, "title": "Person 1"}),
        ("rename_topic", {"person_id": second, "title": "Barack Obama"}),
        ("unhide_person", {"person_id": second}),
        ("delete_posts", {"person_id": first, "uploaded_media_ids": sorted(new_posts)}),
    ]
    after = state(db)
    # The database is as before but for the posts Telegram still shows (until the daemon deletes
    # them) and the requests that say so.
    moved = lambda rows: [r for r in rows if r[0] not in new_posts]  # noqa: E731
    assert moved(after["posts"]) == moved(before["posts"])
    assert {k: v for k, v in after.items() if k not in ("posts", "requests", "persons")} == \
           {k: v for k, v in before.items() if k not in ("posts", "requests", "persons")}
    assert [r[:7] for r in after["persons"]] == [r[:7] for r in before["persons"]]


def test_undo_of_moves_and_dismissals(db):  # noqa: F811
    person = biden(db)
    faces = faces_of(db, person)
    other = persons(db)["Person 1"]
    before = state(db)
    for fn, args in [(corrections.move_faces_to_new_person, (faces[-2:], "Jill Biden")),
                     (corrections_of_persons.move_faces, (faces[-1:], other)),
                     (corrections_of_persons.unassign_faces, (faces[:1],)),
                     (corrections_of_persons.dismiss_faces, (faces,)),
                     (split_person, (person, [faces[-1:], faces[-3:-1]]))]:
        result, record = change(db, fn, *args)
        assert state(db) != before
        undo.undo(db, record)
        assert state(db) == before, fn.__name__


def test_undo_of_a_move_whose_posts_were_deleted_posts_them_again(db):  # noqa: F811
    person = biden(db)
    db.execute("UPDATE telegram_topics SET topic_id = 75 WHERE id = %s", (person,))
    applied(db)
    face = faces_of(db, person)[-1]
    _, record = change(db, corrections_of_persons.dismiss_faces, [face])
    [(_, payload)] = pending(db)
    applied(db)   # the daemon deleted the post from the topic ...
    db.execute("UPDATE uploaded_media SET status = 'cancelled' WHERE id = ANY(%s)", (payload["uploaded_media_ids"],))
    undo.undo(db, record)
    assert db.execute("SELECT status FROM uploaded_media WHERE id = ANY(%s)",
                      (payload["uploaded_media_ids"],)).fetchall() == [("pending",)]   # ... it comes back


def test_undo_is_refused_while_the_daemon_applies_one_of_its_requests(db):  # noqa: F811
    """The daemon holds a request's row while it tells Telegram: the undo cannot tell whether
    Telegram heard it, so it refuses (after a moment) and changes nothing."""
    person = biden(db)
    db.execute("UPDATE telegram_topics SET topic_id = 75 WHERE id = %s", (person,))
    applied(db)
    _, record = change(db, corrections_of_persons.dismiss_faces, faces_of(db, person)[-1:])
    [(action_id,)] = db.execute("SELECT id FROM dashboard_actions WHERE status = 'pending'").fetchall()
    before = state(db)
    with psycopg.connect(db.info.dsn) as daemon, daemon.transaction():
        daemon.execute("SELECT id FROM dashboard_actions WHERE id = %s FOR UPDATE", (action_id,))
        with pytest.raises(undo.UndoRefused, match="at this very moment"):
            undo.undo(db, record)
    assert state(db) == before
    undo.undo(db, record)   # once it is free, the undo withdraws the request
    assert db.execute("SELECT count(*) FROM dashboard_actions WHERE id = %s", (action_id,)).fetchone() == (0,)


def test_undo_of_a_rejected_suggestion(db):  # noqa: F811
    [(suggestion,)] = db.execute("SELECT id FROM merge_suggestions WHERE status = 'open'").fetchall()
    before = state(db)
    _, record = change(db, corrections_of_persons.reject_merge_suggestion, suggestion)
    undo.undo(db, record)
    assert state(db) == before


def test_undo_is_refused_when_later_changes_touch_the_same_faces(db):  # noqa: F811
    person = biden(db)
    face = faces_of(db, person)[-1]
    first, second = persons(db)["Person 1"], persons(db)["Person 2"]
    before = state(db)
    _, earlier = change(db, corrections_of_persons.move_faces, [face], first)
    _, later = change(db, corrections_of_persons.move_faces, [face], second)
    with pytest.raises(undo.UndoRefused, match=f"face #{face} has moved since"):
        undo.undo(db, earlier)
    _, merge = change(db, corrections.merge_persons, second, first)
    with pytest.raises(undo.UndoRefused, match="has been merged since"):
        undo.undo(db, later)
    for record in (merge, later, earlier):   # newest first, each one is safe
        undo.undo(db, record)
    assert state(db) == before


def test_the_audit_log_offers_the_undo_and_says_why_it_is_refused(db):  # noqa: F811
    person = biden(db)
    face = faces_of(db, person)[-1]
    first, second = persons(db)["Person 1"], persons(db)["Person 2"]
    at = signed_in("person", person=str(person))
    for source, target in ((person, first), (first, second)):
        at.query_params["person"] = str(source)
        at.switch_page("dashboard_pages/person.py").run()
        pick(at, db, source, face)
        at.radio(key=f"move_dest_{source}").set_value("other").run()
        at.selectbox(key=f"move_target_{source}").select(target).run()
        at.button(key=f"move_go_{source}").click().run()
    earlier, later = [r[0] for r in db.execute("SELECT id FROM dashboard_audit ORDER BY id")]
    at.switch_page("dashboard_pages/audit_log.py").run()
    assert [b.key for b in at.button if (b.key or "").startswith("undo_")] == [f"undo_audit_{later}", f"undo_audit_{earlier}"]
    at.button(key=f"undo_audit_{earlier}").click().run()
    assert plain(at.error[0].value) == ("Not undone: later changes touched what this one changed: "
                                        f"face #{face} has moved since. Undo those first.")
    at.button(key=f"undo_audit_{later}").click().run()
    at.button(key=f"undo_audit_{earlier}").click().run()
    assert not at.error
    assert db.execute("SELECT topic_id FROM face_embeddings WHERE id = %s", (face,)).fetchone() == (person,)
    assert [b.key for b in at.button if (b.key or "").startswith("undo_")] == []


def later_face(db, like: int, person: int, posted: bool, message: int) -> tuple[int, int]:
    """A face the matcher put into `person` after a change: a new photo of whoever face `like`
    shows (its embedding), in a new message, posted in `person`'s topic. Returns (face, its post)."""
    media = db.execute("""INSERT INTO media_items (media_key, media_type, source_chat_id, source_message_id, status)
                          SELECT 'test:later-' || %s, 'photo', source_chat_id, %s, 'analysed'
                          FROM face_embeddings WHERE id = %s RETURNING id""", (message, message, like)).fetchone()[0]
    face = db.execute("""INSERT INTO face_embeddings (topic_id, embedding, source_chat_id, source_message_id,
                                                      quality_score, state, assigned_by, crop_jpeg, media_item_id)
                         SELECT %s, embedding, source_chat_id, %s, quality_score, 'assigned', 'auto', crop_jpeg, %s
                         FROM face_embeddings WHERE id = %s RETURNING id""", (person, message, media, like)).fetchone()[0]
    post = db.execute("""INSERT INTO uploaded_media (topic_id, media_item_id, source_chat_id, source_message_id, status,
                                                     uploaded_message_id, random_id)
                         SELECT %s, id, source_chat_id, source_message_id, %s, %s, 1 FROM media_items WHERE id = %s
                         RETURNING id""", (person, "posted" if posted else "pending", 900 if posted else None,
                                           media)).fetchone()[0]
    return face, post


def test_undo_of_a_merge_sends_the_faces_that_joined_since_where_they_belong(db):  # noqa: F811
    """Merged by mistake, the survivor grew with new photos of both people: undone, the two are
    apart again, and each new face is with the person it looks like (its post follows it)."""
    joe, barack = biden(db), persons(db)["Person 1"]
    joe_face, barack_face = faces_of(db, joe)[0], faces_of(db, barack)[0]
    db.execute("UPDATE telegram_topics SET topic_id = 76 WHERE id = %s", (barack,))
    at = signed_in("person", person=str(barack))
    at.selectbox(key=f"merge_other_{barack}").select(joe).run()
    at.radio(key=f"merge_keep_{barack}").set_value(barack).run()
    at.button(key=f"merge_go_{barack}").click().run()
    [entry] = [b.key for b in at.button if (b.key or "").startswith("undo_flash_")]
    applied(db)
    new_joe, joe_post = later_face(db, joe_face, barack, posted=True, message=9001)
    new_barack, barack_post = later_face(db, barack_face, barack, posted=False, message=9002)
    operators, _ = later_face(db, joe_face, barack, posted=False, message=9003)
    db.execute("UPDATE face_embeddings SET assigned_by = 'operator' WHERE id = %s", (operators,))
    at.button(key=entry).click().run()
    assert not at.error, [e.value for e in at.error]
    where = dict(db.execute("SELECT id, topic_id FROM face_embeddings WHERE id = ANY(%s)",
                            ([new_joe, new_barack, operators],)).fetchall())
    assert where == {new_joe: joe, new_barack: barack, operators: barack}   # the operator's placement stays
    [joe_label] = db.execute("SELECT label FROM telegram_topics WHERE id = %s", (joe,)).fetchone()
    assert at.success[0].value.endswith(f"1 face that joined since went to «{joe_label}», whose faces it is more like.")
    # Its post: off the survivor's topic (posted: the daemon deletes it, with the posts of the
    # merge), due in Biden's; the other new face's post stays as it was.
    [deleted] = [p["uploaded_media_ids"] for a, p in pending(db) if a == "delete_posts" and p["person_id"] == barack]
    assert joe_post in deleted and barack_post not in deleted
    assert db.execute("SELECT status FROM uploaded_media WHERE id = %s", (barack_post,)).fetchone() == ("pending",)
    assert db.execute("""SELECT status FROM uploaded_media u JOIN face_embeddings f USING (media_item_id)
                         WHERE f.id = %s AND u.topic_id = %s""", (new_joe, joe)).fetchone() == ("pending",)
