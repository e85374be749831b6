"""Every figure the dashboard shows, compared with the database it is about (the filled database
of test_dashboard_support.py: the real pipeline's work on tests/faces)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from test_dashboard import biden, db, persons, signed_in  # noqa: F401
from test_dashboard_support import filled_db, filled_template  # noqa: F401


def scalar(db, query: str, *args):
    return db.execute(query, args).fetchone()[0]


def test_overview_figures_are_the_databases(db):  # noqa: F811
    at = signed_in()
    metrics = {m.label: m.value for m in at.metric}
    expected = {
        "Messages read": "SELECT (SELECT sum(processed_messages) FROM scan_checkpoints)"
                         " + (SELECT sum(messages) FROM imported_chats)",
        "Media analysed": "SELECT count(*) FROM media_items WHERE status = 'analysed'",
        "Faces": "SELECT count(*) FROM face_embeddings",
        "Persons": "SELECT count(*) FROM telegram_topics WHERE merged_into IS NULL AND NOT hidden",
        "Posted": "SELECT count(*) FROM uploaded_media WHERE status = 'posted'",
        "Errors": "SELECT count(*) FROM processing_errors",
    }
    for label, query in expected.items():
        assert metrics[label] == f"{scalar(db, query):,}", label
    waiting = scalar(db, "SELECT count(*) FROM uploaded_media WHERE status IN ('pending', 'sending')")
    assert waiting > 0
    health = at.main.get_by_key("health")
    said = (" ".join(m.value for m in health.markdown) + " " + " ".join(c.value for c in health.caption)
            ).replace("\\", "")   # Markdown escapes
    # Posts wait, and why: the dashboard's settings have no hub.
    assert f"{waiting} posts waiting" in said and "HUB_GROUP_ID is not set" in said
    # Each account's state.
    assert "Archivist: active" in said and "Second: flood wait" in said


def test_the_health_strip_says_whether_the_daemon_runs(db):  # noqa: F811
    db.execute("UPDATE processing_metrics SET recorded_at = now() - interval '1 hour'")
    at = signed_in()
    said = " ".join(m.value for m in at.main.get_by_key("health").markdown)
    assert "Daemon not running" in said
    db.execute("INSERT INTO processing_metrics (metric_name, metric_value) VALUES ('queue_depth', 0)")
    at.run()
    said = " ".join(m.value for m in at.main.get_by_key("health").markdown)
    assert "Daemon running" in said
    last = scalar(db, "SELECT max(finished_at) FROM media_jobs")
    captions = " ".join(c.value for c in at.main.get_by_key("health").caption)
    assert f"{last.astimezone(timezone.utc):%Y-%m-%d %H:%M}" in captions


def test_the_chart_shows_the_last_hours_work(db):  # noqa: F811
    """Right after an import all of its work lies in the current bucket: its bars are drawn
    inside the chart's range (they were drawn after its end, an empty chart)."""
    db.execute("UPDATE processing_metrics SET recorded_at = now()")
    at = signed_in()
    [work, _] = at.get("plotly_chart")
    figure = json.loads(work.proto.spec)
    def utc(text: str) -> datetime:
        value = datetime.fromisoformat(text)
        return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value

    start, end = (utc(x) for x in figure["layout"]["xaxis"]["range"])
    bars = [(utc(x), y) for trace in figure["data"] for x, y in zip(trace["x"], trace["y"])]
    faces = scalar(db, "SELECT sum(metric_value) FROM processing_metrics WHERE metric_name = 'faces_found'")
    assert sum(y for x, y in bars if start <= x <= end and y) >= faces > 0
    assert (end - start).total_seconds() <= 3600 + 120          # the last hour, by minute


def test_a_persons_header_counts_what_its_table_lists(db):  # noqa: F811
    person = biden(db)
    # A post in its topic of a media item without its face (as a merge or a moved face leaves).
    db.execute("""INSERT INTO uploaded_media (topic_id, media_item_id, source_chat_id, source_message_id,
                                              status, uploaded_message_id)
                  SELECT %s, media_item_id, source_chat_id, source_message_id, 'posted', 4343
                  FROM uploaded_media WHERE media_item_id NOT IN
                      (SELECT media_item_id FROM face_embeddings WHERE topic_id = %s)
                  LIMIT 1""", (person, person))
    at = signed_in("person", person=str(person))
    faces = scalar(db, "SELECT count(*) FROM face_embeddings WHERE topic_id = %s", person)
    with_faces = scalar(db, "SELECT count(DISTINCT media_item_id) FROM face_embeddings WHERE topic_id = %s", person)
    table = [d for d in at.dataframe if d.key is None][0].value     # the media (the faces are a grid)
    about = at.markdown[0].value
    assert f"{faces} faces in {with_faces} media items ({len(table)} with its posts)" in about
    assert len(table) == with_faces + 1
    posted = scalar(db, "SELECT count(*) FROM uploaded_media WHERE topic_id = %s AND status = 'posted'", person)
    assert f"{posted} posted" in about and list(table["Post"]).count("posted") == posted


def test_a_pending_rename_names_the_title_telegram_shows_now(db):  # noqa: F811
    person = biden(db)
    db.execute("UPDATE telegram_topics SET topic_id = 77, topic_title = 'Person 3' WHERE id = %s", (person,))
    at = signed_in("person", person=str(person))
    at.text_input(key=f"rename_{person}").input("Joe Biden").run()
    at.button(key=f"rename_{person}_go").click().run()
    at.switch_page("dashboard_pages/overview.py").run()
    changes = list(at.dataframe[-1].value["Change"])
    assert changes == ["Rename the topic «Person 3» to «Joe Biden»"]


def test_imported_chats_are_chats(db):  # noqa: F811
    """An operator who only imported exports: no account reads the chats, yet the Chats page
    lists them by the export's name as imported, the figures count their messages, and the
    captions of faces name them."""
    db.execute("DELETE FROM scan_checkpoints")
    imported = db.execute("SELECT chat_title, messages FROM imported_chats ORDER BY chat_title").fetchall()
    assert [t for t, _ in imported] == ["Family photos", "News pictures", "Old archive"]
    at = signed_in("chats")
    assert "No chat is watched through Telegram yet (the imported ones are below)" in at.info[0].value
    table = at.dataframe[0].value
    assert list(table["Chat"]) == [t for t, _ in imported] and set(table["Source"]) == {"imported"}
    assert list(table["Messages"]) == [m for _, m in imported]
    at.switch_page("dashboard_pages/overview.py").run()
    assert {m.label: m.value for m in at.metric}["Messages read"] == f"{sum(m for _, m in imported):,}"
    person = biden(db)
    at = signed_in("person", person=str(person))
    at.segmented_control(key=f"faces_view_{person}").set_value("tiles").run()
    sources = [c.value for c in at.caption if " · message " in c.value]
    assert sources and all(s.split("  \n")[-1].split(" · message")[0].strip("[") in
                           ("Family photos", "News pictures", "Old archive") for s in sources)
