"""Fixing faces in fewer actions: select all / none / invert, "keep only the selected", a name
for a person made of moved faces (and a merge offered for a name that exists), "set as cover"
on each face, and in review: any person for a face, and all suggestions shown rejected at once."""

from __future__ import annotations

from test_dashboard import grid_faces, pick, actions, biden, db, faces_of, persons, signed_in  # noqa: F401
from test_dashboard_support import filled_db, filled_template  # noqa: F401


def ticked(at, person: int) -> list[int]:
    return sorted(int(k.rsplit("_", 1)[1]) for k in at.session_state.keys()
                  if k.startswith(f"face_{person}_") and at.session_state[k])


def test_select_all_none_invert_and_keep_only_the_selected(db):  # noqa: F811
    person = biden(db)
    faces = faces_of(db, person)
    at = signed_in("person", person=str(person))
    at.button(key=f"select_all_{person}").click().run()
    assert ticked(at, person) == sorted(faces)
    assert f"{len(faces)} of {len(faces)} selected" in [c.value for c in at.caption]
    at.button(key=f"select_none_{person}").click().run()
    assert ticked(at, person) == []
    pick(at, db, person, faces[-1])
    at.button(key=f"select_invert_{person}").click().run()
    keep = sorted(faces[:-1])
    assert ticked(at, person) == keep

    # Invert again: the one face that is not Biden is selected; "keep only" is the other way
    # round: the selected stay, the others leave. One click either way.
    at.radio(key=f"move_dest_{person}").set_value("keep").run()
    assert at.button(key=f"move_go_{person}").label == "Move 1 face out"
    at.button(key=f"move_go_{person}").click().run()
    assert sorted(faces_of(db, person)) == keep
    assert db.execute("SELECT state, topic_id FROM face_embeddings WHERE id = %s", (faces[-1],)).fetchone() == (
        "pending", None)


def test_a_person_made_of_moved_faces_is_named_at_once(db):  # noqa: F811
    person = biden(db)
    face = faces_of(db, person)[-1]
    at = signed_in("person", person=str(person))
    pick(at, db, person, face)
    at.radio(key=f"move_dest_{person}").set_value("new").run()
    at.text_input(key=f"move_name_{person}").input("Jill  Biden").run()
    at.button(key=f"move_go_{person}").click().run()
    new = db.execute("SELECT topic_id FROM face_embeddings WHERE id = %s", (face,)).fetchone()[0]
    assert at.success[0].value == f"Moved the faces to a new person (#{new}), «Jill Biden»."
    assert db.execute("SELECT label, label_is_manual FROM telegram_topics WHERE id = %s", (new,)).fetchone() == (
        "Jill Biden", True)


def test_a_name_that_exists_offers_that_person(db):  # noqa: F811
    person = biden(db)
    other = persons(db)["Person 1"]
    face = faces_of(db, person)[-1]
    at = signed_in("person", person=str(person))
    pick(at, db, person, face)
    at.radio(key=f"move_dest_{person}").set_value("new").run()
    at.text_input(key=f"move_name_{person}").input("person 1").run()
    assert "«Person 1» exists already" in at.warning[0].value
    at.button(key=f"move_to_same_{person}").click().run()
    assert db.execute("SELECT topic_id FROM face_embeddings WHERE id = %s", (face,)).fetchone() == (other,)


def test_set_as_cover_on_the_face_itself(db):  # noqa: F811
    person = biden(db)
    face = faces_of(db, person)[-1]
    at = signed_in("person", person=str(person))
    pick(at, db, person, face)                           # in the grid: one face, then its button
    at.button(key=f"cover_selected_{person}").click().run()
    assert at.success[0].value == "Cover changed."
    other = faces_of(db, person)[0]
    at.segmented_control(key=f"faces_view_{person}").set_value("tiles").run()
    at.button(key=f"cover_face_{other}").click().run()   # in the tiles: the star on the face
    assert at.success[0].value == "Cover changed."
    face = other
    assert db.execute("SELECT cover_face_id, cover_is_manual FROM telegram_topics WHERE id = %s",
                      (person,)).fetchone() == (face, True)


def test_review_assigns_to_anyone_and_rejects_every_suggestion_shown(db):  # noqa: F811
    person = biden(db)                                   # not one of the face's candidates
    [(face,)] = db.execute("SELECT id FROM face_embeddings WHERE state = 'review'").fetchall()
    [(suggestion,)] = db.execute("SELECT id FROM merge_suggestions WHERE status = 'open'").fetchall()
    at = signed_in("review")
    assert "1 of 1, most faces agreeing first." in [c.value for c in at.caption]
    at.button(key="suggestions_reject_all").click().run()
    assert db.execute("SELECT status FROM merge_suggestions WHERE id = %s", (suggestion,)).fetchone() == ("rejected",)
    at.selectbox(key=f"review_other_{face}").select(person).run()
    at.button(key=f"review_other_go_{face}").click().run()
    assert db.execute("SELECT state, topic_id FROM face_embeddings WHERE id = %s", (face,)).fetchone() == (
        "assigned", person)


def test_a_merge_keeps_the_chosen_cover_and_the_bigger_person(db):  # noqa: F811
    first, second = persons(db)["Person 1"], persons(db)["Person 2"]
    chosen = faces_of(db, second)[-1]
    db.execute("UPDATE telegram_topics SET cover_face_id = %s, cover_is_manual = TRUE WHERE id = %s",
               (chosen, second))
    db.execute("UPDATE telegram_topics SET label = 'Barack Obama', label_is_manual = TRUE WHERE id = %s", (first,))
    at = signed_in("person", person=str(second))
    at.selectbox(key=f"merge_other_{second}").select(first).run()
    assert at.radio(key=f"merge_keep_{second}").value == first      # the named one, by default
    at.button(key=f"merge_go_{second}").click().run()
    assert at.success[0].value == "Merged «Person 2» into «Barack Obama»."
    # The cover the operator chose for the absorbed person is the survivor's now (it had none).
    assert db.execute("SELECT cover_face_id, cover_is_manual FROM telegram_topics WHERE id = %s",
                      (first,)).fetchone() == (chosen, True)


def add_copies(db, face: int, n: int) -> None:
    """`n` more faces of `face`'s person: copies of it, of lower quality (they sort after it)."""
    db.execute("""INSERT INTO face_embeddings (topic_id, embedding, source_chat_id, source_message_id,
                                               quality_score, state, crop_jpeg, media_item_id)
                  SELECT topic_id, embedding, source_chat_id, source_message_id, quality_score * 0.5,
                         state, crop_jpeg, media_item_id
                  FROM face_embeddings, generate_series(1, %s) WHERE id = %s""", (n, face))


def test_a_persons_faces_page_through_everything_with_counts(db):  # noqa: F811
    person = biden(db)
    [face] = faces_of(db, person)[:1]
    add_copies(db, face, 100)
    total = len(faces_of(db, person))
    at = signed_in("person", person=str(person))
    assert f"1–96 of {total} faces, best first" in [c.value for c in at.caption]
    assert grid_faces(at, person) == 96
    at.button(key=f"faces_page_{person}_next").click().run()
    assert f"97–{total} of {total} faces, best first" in [c.value for c in at.caption]
    assert grid_faces(at, person) == total - 96
    at = signed_in("review")
    assert "1–1 of 1 faces, oldest first" in [c.value for c in at.caption]


def images(node) -> int:
    """How many pictures are drawn in this part of the page."""
    if type(node).__name__ == "Image":
        return 1
    return sum(images(child) for child in getattr(node, "children", {}).values())


def test_review_shows_several_faces_of_each_side_and_the_whole_photo(db):  # noqa: F811
    [(face, media)] = db.execute("SELECT id, media_item_id FROM face_embeddings WHERE state = 'review'").fetchall()
    at = signed_in("review")
    [photo] = [e for e in at.expander if e.label == "Whole photo"]
    # The file the face was found in (an export's file stays where it is), as a picture.
    assert images(photo) == 1
    # Each candidate and each side of a suggestion: its cover and up to three more faces.
    shown = images(at.main)
    covers = db.execute("SELECT count(*) FROM telegram_topics WHERE merged_into IS NULL").fetchone()[0]
    assert shown > covers + 1


def test_a_click_toggles_a_face_and_a_box_selects_every_face_in_it(db):  # noqa: F811
    person = biden(db)
    faces = faces_of(db, person)
    at = signed_in("person", person=str(person))
    pick(at, db, person, faces[1])
    assert ticked(at, person) == [faces[1]]
    pick(at, db, person, faces[1])                        # a second click unselects it
    assert ticked(at, person) == []
    # A drag (or a click and a shift-click) from the 2nd to the 4th face: one rerun, three faces.
    [key] = [d.key for d in at.dataframe if (d.key or "").startswith(f"face_grid_{person}_")]
    at.session_state[key] = {"selection": {"rows": [], "columns": [], "cells": [[0, "2"], [0, "3"], [0, "4"]]}}
    at.run()
    assert ticked(at, person) == sorted(faces[1:4])
    assert "3 of 5 selected" in [c.value for c in at.caption]


def test_review_splits_a_person_offered_and_reclusters_behind_a_confirmation(db):  # noqa: F811
    person = biden(db)
    faces = faces_of(db, person)
    suggestion = db.execute("INSERT INTO split_suggestions (person_id, face_ids, person_faces, score) "
                            "VALUES (%s, %s, %s, 0.8) RETURNING id", (person, faces[-2:], len(faces))).fetchone()[0]
    at = signed_in("review")
    at.button(key=f"split_go_{suggestion}").click().run()
    [(new,)] = db.execute("SELECT DISTINCT topic_id FROM face_embeddings WHERE id = ANY(%s)", (faces[-2:],)).fetchall()
    assert new != person and sorted(faces_of(db, person)) == sorted(faces[:-2])
    assert db.execute("SELECT status FROM split_suggestions WHERE id = %s", (suggestion,)).fetchone() == ("accepted",)
    # Recluster: a preview first (nothing changes), then the confirmed run, in the audit log.
    before = db.execute("SELECT id, topic_id, state FROM face_embeddings ORDER BY id").fetchall()
    at.button(key="recluster_preview").click().run()
    assert "Dry run: nothing was changed" in at.code[0].value
    assert db.execute("SELECT id, topic_id, state FROM face_embeddings ORDER BY id").fetchall() == before
    assert "recluster_go" not in [b.key for b in at.button]   # not before the confirmation
    at.checkbox(key="recluster_confirm").check().run()
    at.button(key="recluster_go").click().run()
    assert at.success[0].value.startswith("Re-decided ")
    assert db.execute("SELECT action FROM dashboard_audit ORDER BY id DESC LIMIT 1").fetchone() == (
        "recluster_persons",)


def test_range_selects_every_face_between_two_clicks_in_reading_order(db):  # noqa: F811
    person = biden(db)
    [face] = faces_of(db, person)[:1]
    add_copies(db, face, 14)
    faces = faces_of(db, person)                          # 19 faces: rows of 8, 8 and 3
    other = persons(db)["Person 1"]
    at = signed_in("person", person=str(person))
    pick(at, db, person, faces[0])                        # a plain click, before the range
    at.toggle(key=f"face_range_{person}").set_value(True).run()
    assert "Range: click the first face of the run, then the last." in [c.value for c in at.caption]
    pick(at, db, person, faces[13])                       # 2nd row, 6th face: where the run starts ...
    assert f"Range from the 14th face (#{faces[13]}): click the last face." in [c.value for c in at.caption]
    pick(at, db, person, faces[5])                        # ... 1st row, 6th face: where it ends (backwards)
    # The run in reading order: the end of the 1st row and the start of the 2nd, not the box of
    # columns 6 only that a drag between the two faces would select.
    assert ticked(at, person) == sorted([faces[0]] + faces[5:14])
    assert "10 of 19 selected" in [c.value for c in at.caption]
    # The move takes exactly those faces.
    at.radio(key=f"move_dest_{person}").set_value("other").run()
    at.selectbox(key=f"move_target_{person}").select(other).run()
    at.button(key=f"move_go_{person}").click().run()
    assert sorted(faces[0:1] + faces[5:14]) == sorted(
        r[0] for r in db.execute("SELECT id FROM face_embeddings WHERE topic_id = %s AND id = ANY(%s)",
                                 (other, faces)))
    assert sorted(faces_of(db, person)) == sorted(faces[1:5] + faces[14:])
