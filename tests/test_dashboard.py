"""The dashboard's pages in Streamlit's AppTest, on a real PostgreSQL that the real pipeline
filled from tests/faces (test_dashboard_support.py): three persons (Obama split in two by a
cautious setting, Biden), a merge suggestion, a face waiting for review, a corrupt file's error,
two accounts and three watched chats. The dashboard reaches the database as a deployment would:
through POSTGRES_* in the environment."""

from __future__ import annotations

from datetime import timezone
from pathlib import Path

import psycopg
import pytest
import streamlit as st
from streamlit.proto.TextInput_pb2 import TextInput as TextInputProto
from streamlit.testing.v1 import AppTest

from conftest import FACES_DIR
from test_dashboard_support import (FAMILY, NEWS, PASSWORD, dashboard_environment, filled_db,  # noqa: F401
                                    filled_template)

APP = Path(__file__).resolve().parents[1] / "dashboard.py"


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def db(clean_env, filled_db, tmp_path):  # noqa: F811
    """A copy of the filled database, the dashboard's environment pointing at it, and a sync
    connection to look at what the dashboard did. Streamlit's resource cache (settings, pool)
    is emptied around each test: each test is a fresh dashboard process."""
    dashboard_environment(clean_env, filled_db, tmp_path)
    st.cache_resource.clear()
    with psycopg.connect(filled_db, autocommit=True) as conn:
        yield conn
    st.cache_resource.clear()


def start() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=30).run()


def signed_in(page: str | None = None, **query: str) -> AppTest:
    """The dashboard after signing in with the right password, on `page` (a file name in
    dashboard_pages without .py) with `query` as its URL's query parameters."""
    at = start()
    at.text_input(key="password").input(PASSWORD)
    at.button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    if page:
        at.query_params.update(query)
        at.switch_page(f"dashboard_pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def page_text(at: AppTest) -> str:
    """Everything the app sent to the browser, as text (tables and images included)."""
    return "\n".join(str(node.proto) for block in (at.main, at.sidebar) for node in block
                     if getattr(node, "proto", None) is not None)


def persons(db) -> dict[str, int]:
    """{label: id} of the persons not merged away."""
    return dict(db.execute("SELECT label, id FROM telegram_topics WHERE merged_into IS NULL").fetchall())


def faces_of(db, person: int) -> list[int]:
    return [r[0] for r in db.execute(
        "SELECT id FROM face_embeddings WHERE topic_id = %s ORDER BY low_quality, quality_score DESC, id", (person,))]


FACES_PER_ROW = 8   # dashboard_pages/person.py


def pick(at: AppTest, db, person: int, face: int) -> AppTest:
    """Click `face` in the grid of `person`'s faces (a click on one picture selects it)."""
    index = faces_of(db, person).index(face)
    [key] = [d.key for d in at.dataframe if (d.key or "").startswith(f"face_grid_{person}_")]
    at.session_state[key] = {"selection": {"rows": [], "columns": [],
                                           "cells": [[index // FACES_PER_ROW, str(index % FACES_PER_ROW + 1)]]}}
    return at.run()


def grid_faces(at: AppTest, person: int) -> int:
    """How many faces the grid of `person`'s faces shows."""
    [grid] = [d for d in at.dataframe if (d.key or "").startswith(f"face_grid_{person}_")]
    return int(grid.value.notna().sum().sum())


def actions(db) -> list[tuple[str, dict]]:
    return db.execute("SELECT action, payload FROM dashboard_actions WHERE status = 'pending' ORDER BY id").fetchall()


def biden(db) -> int:
    """The person with the most faces: Biden (5 faces)."""
    return db.execute("""SELECT topic_id FROM face_embeddings WHERE topic_id IS NOT NULL
                         GROUP BY topic_id ORDER BY count(*) DESC LIMIT 1""").fetchone()[0]


def messages(elements) -> list[str]:
    return [e.value for e in elements]


def review_buttons(at: AppTest, face: int) -> list[str]:
    """The "It's <person>" buttons of a face in review."""
    return [b.label for b in at.button if (b.key or "").startswith(f"review_{face}_")]


# --- access --------------------------------------------------------------------------------------


def test_a_wrong_password_gets_nothing(db):
    at = start()
    assert at.text_input(key="password").proto.type == TextInputProto.PASSWORD  # typed blind
    at.text_input(key="password").input("correct horse battery stapler")
    at.button[0].click().run()
    assert messages(at.error) == ["Wrong password."]
    # Nothing of the archive: no navigation, no numbers, no names, no pictures.
    text = page_text(at)
    assert not at.metric and not at.dataframe and not at.image and not at.page_link
    assert "Overview" not in text and "Person 1" not in text and "Family photos" not in text
    # Asking for a page directly gets the same form.
    at.query_params["person"] = str(biden(db))
    at.switch_page("dashboard_pages/person.py").run()
    assert not at.metric and not at.image and [t.value for t in at.title] == ["Face Archiver"]
    # The right password opens it.
    at.text_input(key="password").input(PASSWORD)
    at.button[0].click().run()
    assert not at.error
    assert [t.value for t in at.title] == ["Person 3"]


def test_the_dashboard_refuses_to_run_without_a_password(db, clean_env):
    from streamlit import config as streamlit_config

    clean_env.delenv("DASHBOARD_PASSWORD")
    at = start()
    assert "DASHBOARD_PASSWORD is not set" in at.error[0].value
    assert not at.text_input and not at.metric

    # Turning the password off is for a dashboard on localhost only.
    clean_env.setenv("DASHBOARD_AUTH", "false")
    st.cache_resource.clear()
    at = start()
    assert "accepted only for a dashboard that listens on localhost" in at.error[0].value
    assert not at.text_input and not at.metric

    streamlit_config.set_option("server.address", "127.0.0.1")
    try:
        at = start()
    finally:
        streamlit_config.set_option("server.address", None)
    assert not at.error and not at.text_input
    assert [t.value for t in at.title] == ["Overview"]


def test_an_unreachable_database_is_said_plainly(db, clean_env, tmp_path):
    clean_env.setenv("POSTGRES_HOST", str(tmp_path / "no-server-here"))
    clean_env.setenv("POSTGRES_PASSWORD", "s3cret-db-password")
    at = start()
    at.text_input(key="password").input(PASSWORD)
    at.button[0].click().run()
    assert not at.exception
    [error] = messages(at.error)
    assert error.startswith("The database cannot be used: cannot connect to PostgreSQL at socket ")
    assert "s3cret-db-password" not in page_text(at)
    assert not at.title and not at.metric


# --- monitoring ----------------------------------------------------------------------------------


def test_overview_counts_charts_queue_and_accounts(db):
    at = signed_in()
    assert [t.value for t in at.title] == ["Overview"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Messages read"] == "1,566"      # 1,200 + 340 + 10 read in the three chats, 16 imported
    assert metrics["Media analysed"] == "15"           # 14 photos and the re-sent one; the corrupt file failed
    assert metrics["Faces"] == "24"
    assert metrics["Persons"] == "3"
    assert metrics["Errors"] == "1"
    assert (metrics["To download"], metrics["To analyse"], metrics["Failed"]) == ("0", "0", "1")
    assert [link.label for link in at.page_link] == ["Review: 1 merge suggestion, 1 face to decide"]
    # Charts of what the workers recorded in processing_metrics.
    charts = at.get("plotly_chart")
    assert len(charts) == 2
    assert "faces found" in str(charts[0].proto) and "to analyse" in str(charts[1].proto)
    # Accounts: a flood wait is shown with its end; phone numbers and secrets are not.
    accounts = at.dataframe[0].value
    assert list(accounts["Account"]) == ["Archivist", "Second"]
    assert accounts["State"][0] == "active"
    assert accounts["State"][1].startswith("paused by a flood wait until ")
    assert list(accounts["Phone"]) == ["+44…23", "+15…87"]
    text = page_text(at)
    assert "7700900123" not in text and "5550100987" not in text
    assert "unused-by-trust-auth" not in text and PASSWORD not in text


def test_chats_show_progress_and_pause_and_resume(db):
    at = signed_in("chats")
    table = at.dataframe[0].value
    assert list(table["Chat"]) == ["Family photos (@family_photos)", "News pictures", "Old archive"]
    assert list(table["Messages"]) == ["1,200 / 1,200", "340 / 1,000", "10 / 5,000"]
    assert list(table["Progress"]) == pytest.approx([1.0, 0.34, 0.002])
    assert list(table["Mode"]) == ["realtime", "backfill", "backfill"]
    assert list(table["Skipped media"]) == [0, 2, 0]
    assert list(table["Jobs failed"]) == [0, 1, 0]      # the corrupt file came from News pictures

    family = db.execute("SELECT id FROM scan_checkpoints WHERE chat_id = %s", (FAMILY,)).fetchone()[0]
    at.selectbox(key="pause_chat").select(family).run()
    at.button(key="pause_resume").click().run()
    assert messages(at.success) == [r"Paused Family photos (@family\_photos)."]   # Markdown, escaped
    assert db.execute("SELECT state FROM scan_checkpoints WHERE id = %s", (family,)).fetchone() == ("paused",)
    assert at.button(key="pause_resume").label == "Resume"
    at.button(key="pause_resume").click().run()
    assert db.execute("SELECT state FROM scan_checkpoints WHERE id = %s", (family,)).fetchone() == ("active",)
    assert actions(db) == []                            # nothing for Telegram


def test_stop_watching_a_chat_keeps_its_data_and_is_audited(db):
    news = db.execute("SELECT id, account_id FROM scan_checkpoints WHERE chat_id = %s", (NEWS,)).fetchone()
    faces = db.execute("SELECT count(*) FROM face_embeddings").fetchone()
    at = signed_in("chats")
    at.selectbox(key="remove_chat").select(news[0]).run()
    assert at.button(key="remove_chat_go").disabled            # not before the confirmation
    at.checkbox(key="remove_chat_confirm").check().run()
    at.button(key="remove_chat_go").click().run()
    assert db.execute("SELECT state FROM scan_checkpoints WHERE id = %s", (news[0],)).fetchone() == ("removed",)
    assert db.execute("SELECT count(*) FROM media_jobs WHERE source_chat_id = %s AND status IN ('queued', 'staged')",
                      (NEWS,)).fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM face_embeddings").fetchone() == faces      # its data stays
    [(action, summary)] = db.execute("SELECT action, summary FROM dashboard_audit WHERE action = 'stop_watching'").fetchall()
    assert summary.startswith("Stopped watching News pictures: 1 watch record(s) removed")
    db.execute("UPDATE scan_checkpoints SET state = 'active' WHERE id = %s", (news[0],))   # as it was


def test_add_a_chat_records_the_same_request_as_add_chat_py(db):
    pytest.importorskip("add_chat", reason="add_chat.py (the telegram side) is not written yet")
    at = signed_in("chats")
    at.text_input[0].input("@new_channel")
    at.selectbox[1].select(2)
    [submit] = [b for b in at.button if b.label == "Add chat"]
    submit.click().run()
    assert not at.error, messages(at.error)
    assert messages(at.success) == [r"Requested @new\_channel: the daemon adds it at its next check."]
    [(action, payload)] = actions(db)
    assert action == "add_chat" and "new_channel" in str(payload)
    assert "@new_channel" in " ".join(at.dataframe[-1].value["Chat"])


def test_errors_list_filter_and_context(db):
    at = signed_in("errors")
    table = at.dataframe[0].value
    assert list(table["Type"]) == ["MediaError"]
    assert "corrupt.jpg" in table["Message"][0]
    context = at.json[0].value
    assert '"stage": "analyse"' in context and '"will_retry": false' in context
    at.text_input[0].input("no such words").run()
    assert messages(at.info) == ["No error matches this filter."]
    at.text_input[0].input("CORRUPT").run()
    assert len(at.dataframe[0].value) == 1
    at.multiselect[0].select("MediaError").run()
    assert len(at.dataframe[0].value) == 1


# --- persons -------------------------------------------------------------------------------------


def test_the_gallery_shows_the_persons_the_pipeline_made(db):
    at = signed_in("gallery")
    tiles = [link.label for link in at.page_link]
    assert sorted(tiles) == ["Person 1", "Person 2", "Person 3"] == sorted(persons(db))
    assert tiles[0] == "Person 3"                       # most faces first
    assert len(at.image) == 3                           # a cover each
    captions = " ".join(c.value for c in at.caption)
    assert "5 faces · 5 media  \n0 posted" in captions
    # First and last seen: the dates of the messages the faces are in (the export's dates).
    first, last = db.execute("""SELECT (min(m.message_date) AT TIME ZONE 'UTC')::date::text,
                                       (max(m.message_date) AT TIME ZONE 'UTC')::date::text
                                FROM face_embeddings f JOIN media_items m ON m.id = f.media_item_id
                                WHERE f.topic_id = %s""", (biden(db),)).fetchone()
    assert f"first {first}  \nlast {last}" in captions

    at.text_input(key="gallery_filter").input("person 2").run()
    assert [link.label for link in at.page_link] == ["Person 2"]
    at.text_input(key="gallery_filter").input("").run()

    db.execute("UPDATE telegram_topics SET hidden = TRUE WHERE label = 'Person 2'")
    at.run()
    assert sorted(link.label for link in at.page_link) == ["Person 1", "Person 3"]
    at.checkbox(key="gallery_hidden").check().run()
    assert "Person 2 (hidden)" in [link.label for link in at.page_link]


def test_names_from_telegram_and_labels_are_shown_as_typed_not_as_markdown(db):
    """A chat title or a label is text: a link, emphasis or a colour in it stays literal."""
    person = biden(db)
    label = "[win](https://evil.example) **now** :red[x]"
    db.execute("UPDATE telegram_topics SET label = %s WHERE id = %s", (label, person))
    db.execute("UPDATE scan_checkpoints SET chat_title = %s WHERE chat_id IN "
               "(SELECT source_chat_id FROM face_embeddings WHERE topic_id = %s)", ("# _Chat_ [x](y)", person))
    # (a word joiner after "https:": Markdown links bare addresses even with the colon escaped)
    literal = "\\[win\\](https\\:\u2060//evil.example) \\*\\*now\\*\\* \\:red\\[x\\]"
    at = signed_in("gallery")
    assert literal in [link.label for link in at.page_link]
    at = signed_in("person", person=str(person))
    assert [t.value for t in at.title] == [literal]
    at.segmented_control(key=f"faces_view_{person}").set_value("tiles").run()
    assert any(r"\# \_Chat\_ \[x\](y) · message" in c.value for c in at.caption)
    # ... and on the page of a person merged into it.
    [other] = db.execute("INSERT INTO telegram_topics (label, merged_into) VALUES ('*x*', %s) RETURNING id",
                         (person,)).fetchone()
    at = signed_in("person", person=str(other))
    assert [t.value for t in at.title] == [r"\*x\*"] and [link.label for link in at.page_link] == [literal]
    assert literal in at.info[0].value


def test_a_persons_page_shows_faces_media_and_sources(db):
    person = biden(db)
    # Its topic exists in the hub and one of its media was posted there.
    db.execute("UPDATE telegram_topics SET topic_id = 77, hub_chat_id = -1009999999999 WHERE id = %s", (person,))
    posted = db.execute("""UPDATE uploaded_media SET status = 'posted', uploaded_message_id = 4242, uploaded_at = now()
                           WHERE id = (SELECT min(id) FROM uploaded_media WHERE topic_id = %s)
                           RETURNING media_item_id""", (person,)).fetchone()[0]
    at = signed_in("person", person=str(person))
    assert [t.value for t in at.title] == ["Person 3"]
    about = at.markdown[0].value
    assert "[topic](https://t.me/c/9999999999/77)" in about and "5 faces in 5 media items" in about
    # Seen: the dates of its messages, as in the gallery (not when the pipeline ran).
    first, last = db.execute("""SELECT min(m.message_date), max(m.message_date)
                                FROM face_embeddings f JOIN media_items m ON m.id = f.media_item_id
                                WHERE f.topic_id = %s""", (person,)).fetchone()
    first, last = (t.astimezone(timezone.utc) for t in (first, last))   # the viewer's zone: UTC here
    assert f"first seen {first:%Y-%m-%d %H:%M}, last seen {last:%Y-%m-%d %H:%M}" in about
    assert grid_faces(at, person) == 5 == len(faces_of(db, person))
    media = [d for d in at.dataframe if d.key is None][0].value
    assert len(media) == 5 and sorted(media["Post"]) == ["pending"] * 4 + ["posted"]
    assert [link for link in media["Post link"] if link] == ["https://t.me/c/9999999999/77/4242"]
    assert "None" not in list(media["Post link"])        # an empty cell, not the word None
    assert all(link.startswith("https://t.me/") for link in media["Source link"])
    # Newest message first, with its date (the export's message dates).
    assert list(media["Date"]) == sorted(media["Date"], reverse=True)
    source = db.execute("SELECT source_message_id FROM media_items WHERE id = %s", (posted,)).fetchone()[0]
    assert media[media["Post"] == "posted"]["Source"].iloc[0].endswith(f"message {source}")
    assert "https://t.me/family_photos/" in page_text(at)   # a public chat links by username


def test_rename_shows_the_telegram_change_then_records_it(db):
    person = biden(db)
    at = signed_in("person", person=str(person))
    at.text_input(key=f"rename_{person}").input("Joe  Biden ").run()
    assert "has no topic; it is created as «Joe Biden»" in at.info[0].value
    assert actions(db) == []                            # nothing changes before the click
    at.button(key=f"rename_{person}_go").click().run()
    assert messages(at.success) == ["Renamed to «Joe Biden»."]
    assert [t.value for t in at.title] == ["Joe Biden"]
    assert db.execute("SELECT label, label_is_manual FROM telegram_topics WHERE id = %s",
                      (person,)).fetchone() == ("Joe Biden", True)
    assert actions(db) == [("rename_topic", {"person_id": person, "title": "Joe Biden"})]

    # With a topic on Telegram, the preview says it is renamed; a name too long for a title is refused.
    db.execute("UPDATE telegram_topics SET topic_id = 77, topic_title = 'Joe Biden' WHERE id = %s", (person,))
    at.text_input(key=f"rename_{person}").input("Joseph R. Biden").run()
    assert "the topic «Joe Biden» is renamed to «Joseph R. Biden»" in at.info[0].value
    at.text_input(key=f"rename_{person}").input("Я" * 65).run()
    assert "Too long for a topic title: 130 bytes" in at.error[0].value
    assert f"rename_{person}_go" not in [b.key for b in at.button]
    assert len(actions(db)) == 1


def test_merge_two_persons_from_a_persons_page(db):
    first, second = persons(db)["Person 1"], persons(db)["Person 2"]
    second_faces = faces_of(db, second)
    at = signed_in("person", person=str(second))
    at.selectbox(key=f"merge_other_{second}").select(first).run()
    at.radio(key=f"merge_keep_{second}").set_value(first).run()
    preview = at.info[0].value
    assert "«Person 2» has no topic: nothing to close." in preview
    assert "2 posts of «Person 2» not sent yet are cancelled." in preview
    assert "2 media items become due in «Person 1»'s topic" in preview
    assert actions(db) == []
    at.button(key=f"merge_go_{second}").click().run()
    # The page follows to the person that stayed.
    assert messages(at.success) == ["Merged «Person 2» into «Person 1»."]
    assert [t.value for t in at.title] == ["Person 1"]
    assert db.execute("SELECT merged_into FROM telegram_topics WHERE id = %s", (second,)).fetchone() == (first,)
    assert set(second_faces) < set(faces_of(db, first))
    assert actions(db) == [("merge_persons", {
        "survivor_id": first, "absorbed_id": second, "title": "→ merged into Person 1",
        "note": "Merged into Person 1: its posts continue there."})]
    # The overview lists the change until the daemon has made it on Telegram.
    at.switch_page("dashboard_pages/overview.py").run()
    assert list(at.dataframe[1].value["Change"]) == [
        "Close the topic of «Person 2» (merged into «Person 1») with a last note, renamed «→ merged into Person 1»"]
    at.switch_page("dashboard_pages/person.py")
    # The absorbed person's page says where it went.
    at.query_params["person"] = str(second)
    at.run()
    assert "Merged into «Person 1»" in at.info[0].value


def test_move_a_face_out_to_a_new_person(db):
    person = biden(db)
    face = faces_of(db, person)[-1]                     # the Situation Room face, the weakest
    media = db.execute("SELECT media_item_id FROM face_embeddings WHERE id = %s", (face,)).fetchone()[0]
    at = signed_in("person", person=str(person))
    pick(at, db, person, face)
    at.radio(key=f"move_dest_{person}").set_value("new").run()
    preview = at.info[0].value
    assert "1 post of «Person 3» not sent yet is cancelled." in preview
    assert "a new person is made of these faces: 1 media item becomes due in its topic" in preview
    at.button(key=f"move_go_{person}").click().run()
    new = db.execute("SELECT topic_id FROM face_embeddings WHERE id = %s", (face,)).fetchone()[0]
    assert new not in (None, person)
    assert messages(at.success) == [f"Moved the faces to a new person (#{new})."]
    assert face not in faces_of(db, person) and len(faces_of(db, person)) == 4
    # "Not this person" is kept; the post moved with the face.
    assert db.execute("SELECT topic_id FROM face_rejections WHERE face_id = %s", (face,)).fetchall() == [(person,)]
    assert db.execute("""SELECT topic_id, status FROM uploaded_media
                         WHERE media_item_id = %s AND topic_id IN (%s, %s) ORDER BY topic_id""",
                      (media, person, new)).fetchall() == [(person, "cancelled"), (new, "pending")]
    assert actions(db) == []                            # nothing was posted yet: nothing to delete


def test_move_a_posted_face_to_another_person_deletes_its_post(db):
    first, second = persons(db)["Person 1"], persons(db)["Person 2"]
    face = faces_of(db, second)[0]
    media = db.execute("SELECT media_item_id FROM face_embeddings WHERE id = %s", (face,)).fetchone()[0]
    db.execute("""UPDATE uploaded_media SET status = 'posted', uploaded_message_id = 4242, uploaded_at = now()
                  WHERE topic_id = %s AND media_item_id = %s""", (second, media))
    at = signed_in("person", person=str(second))
    pick(at, db, second, face)
    at.radio(key=f"move_dest_{second}").set_value("other").run()
    at.selectbox(key=f"move_target_{second}").select(first).run()
    preview = at.info[0].value
    assert "1 post in «Person 2»'s topic is deleted" in preview
    assert "1 media item becomes due in «Person 1»'s topic." in preview
    at.button(key=f"move_go_{second}").click().run()
    assert messages(at.success) == ["Moved the faces to «Person 1»."]
    assert face in faces_of(db, first)
    [(action, payload)] = actions(db)
    assert action == "delete_posts" and payload["person_id"] == second


def test_choose_a_cover(db):
    person = biden(db)
    face = faces_of(db, person)[-1]
    at = signed_in("person", person=str(person))
    at.selectbox(key=f"cover_{person}").select(face).run()
    assert "its topic will start with this face" in at.info[0].value
    at.button(key=f"cover_go_{person}").click().run()
    assert messages(at.success) == ["Cover changed."]
    assert db.execute("SELECT cover_face_id, cover_is_manual FROM telegram_topics WHERE id = %s",
                      (person,)).fetchone() == (face, True)
    assert actions(db) == [("update_cover", {"person_id": person, "face_id": face})]
    at.segmented_control(key=f"faces_view_{person}").set_value("tiles").run()
    assert f"#{face} ★" in [c.label for c in at.checkbox]


def test_hide_and_unhide_a_person(db):
    person = biden(db)
    at = signed_in("person", person=str(person))
    assert "5 posts not sent yet are cancelled" in at.info[-1].value
    at.button(key=f"hide_{person}").click().run()
    assert messages(at.success) == ["«Person 3» is hidden."]
    assert [t.value for t in at.title] == ["Person 3 (hidden)"]
    assert db.execute("SELECT count(*) FROM uploaded_media WHERE topic_id = %s AND status = 'pending'",
                      (person,)).fetchone() == (0,)
    assert "5 media items held back while hidden become due." in at.info[-1].value
    at.button(key=f"unhide_{person}").click().run()
    assert db.execute("SELECT count(*) FROM uploaded_media WHERE topic_id = %s AND status = 'pending'",
                      (person,)).fetchone() == (5,)
    assert actions(db) == [("hide_person", {"person_id": person}), ("unhide_person", {"person_id": person})]


# --- review --------------------------------------------------------------------------------------


def test_review_merges_a_suggestion_and_decides_a_face(db):
    first, second = persons(db)["Person 1"], persons(db)["Person 2"]
    [(suggestion,)] = db.execute("SELECT id FROM merge_suggestions WHERE status = 'open'").fetchall()
    [(face,)] = db.execute("SELECT id FROM face_embeddings WHERE state = 'review'").fetchall()
    at = signed_in("review")
    assert "Similarity of their closest faces: **0.968**" in [m.value for m in at.markdown]
    # The face the matcher could not decide: its two candidates, best first.
    assert review_buttons(at, face) == ["It's Person 2", "It's Person 1"]
    assert at.radio(key=f"suggestion_keep_{suggestion}").value == first   # the older one stays by default
    at.button(key=f"suggestion_merge_{suggestion}").click().run()
    assert messages(at.success) == ["Merged «Person 2» into «Person 1»."]
    assert db.execute("SELECT status FROM merge_suggestions WHERE id = %s", (suggestion,)).fetchone() == ("accepted",)
    assert db.execute("SELECT merged_into FROM telegram_topics WHERE id = %s", (second,)).fetchone() == (first,)
    # Both candidates are one person now.
    assert review_buttons(at, face) == ["It's Person 1"]
    at.button(key=f"review_{face}_{first}").click().run()
    assert db.execute("SELECT state, topic_id FROM face_embeddings WHERE id = %s", (face,)).fetchone() == (
        "assigned", first)
    assert "No faces to decide." in " ".join(c.value for c in at.caption)


def test_review_rejects_a_suggestion_and_dismisses_a_face(db):
    [(suggestion,)] = db.execute("SELECT id FROM merge_suggestions WHERE status = 'open'").fetchall()
    [(face,)] = db.execute("SELECT id FROM face_embeddings WHERE state = 'review'").fetchall()
    at = signed_in("review")
    at.button(key=f"suggestion_reject_{suggestion}").click().run()
    assert db.execute("SELECT status FROM merge_suggestions WHERE id = %s", (suggestion,)).fetchone() == ("rejected",)
    assert len(persons(db)) == 3
    at.button(key=f"review_dismiss_{face}").click().run()
    assert db.execute("SELECT state FROM face_embeddings WHERE id = %s", (face,)).fetchone() == ("dismissed",)
    assert actions(db) == []


# --- search by photo -----------------------------------------------------------------------------


def test_search_by_photo_finds_the_persons_in_it(db):
    obama = {"Person 1", "Person 2"}
    at = signed_in("search")
    photo = FACES_DIR / "group_obama_biden_composite.jpg"
    at.file_uploader[0].set_value((photo.name, photo.read_bytes(), "image/jpeg")).run()
    assert not at.exception and not at.error
    assert "2 faces found (dlib engine)" in at.caption[0].value
    found = []
    for number in (1, 2):
        face = at.main.get_by_key(f"search_face_{number}")
        labels = [link.label for link in face.page_link]
        verdicts = [c.value for c in face.caption if c.value.startswith("similarity")]
        # Every person, nearest first; the nearest is "likely" (the same photo's faces are stored).
        assert sorted(labels) == ["Person 1", "Person 2", "Person 3"]
        assert verdicts[0].endswith("· likely")
        found.append(labels[0])
    assert found[0] != found[1] and "Person 3" in found and obama & set(found)
    assert len(db.execute("SELECT id FROM face_embeddings").fetchall()) == 24   # nothing was stored


def test_search_by_photo_refuses_what_is_not_a_photo(db):
    at = signed_in("search")
    at.file_uploader[0].set_value(("notes.jpg", b"these are not pixels", "image/jpeg")).run()
    assert "cannot be read as a photo" in at.error[0].value


def test_a_process_spawned_where_the_dashboard_is_main_does_not_run_it(clean_env, tmp_path):
    """multiprocessing's "spawn" runs the parent's __main__ file again, as __mp_main__, in the new
    process (a process that ran the dashboard has it as __main__: AppTest leaves it so). That
    copy must start nothing: it used to open a dashboard and an embedded database in ./data."""
    import subprocess
    import sys

    from conftest import ROOT

    clean_env.setenv("DATA_DIR", str(tmp_path / "data"))
    clean_env.setenv("DASHBOARD_PASSWORD", PASSWORD)
    code = "import runpy, sys; sys.path.insert(0, sys.argv[2]); runpy.run_path(sys.argv[1], run_name='__mp_main__')"
    done = subprocess.run([sys.executable, "-c", code, str(ROOT / "dashboard.py"), str(ROOT)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "data").exists(), "the spawned copy started an embedded database"
