"""Erasure: `main.py forget PERSON_ID --yes` on the dashboard's filled database (real faces from the
real pipeline): the person's faces, crops and embeddings are gone, its posts withdrawn through
the action queue and its topic renamed and closed, and the same media seen again does not bring
it back."""

from __future__ import annotations

import psycopg
import pytest

import main
from test_dashboard_support import filled_db, filled_template  # noqa: F401
from test_queue import Analyser, add_job, job_row, make_pool, matcher, run_until  # noqa: F401


@pytest.fixture
def conninfo(filled_db, clean_env, tmp_path):  # noqa: F811
    params = psycopg.conninfo.conninfo_to_dict(filled_db)
    for name, value in {"POSTGRES_HOST": params["host"], "POSTGRES_DB": params["dbname"],
                        "POSTGRES_USER": params["user"], "POSTGRES_PASSWORD": "unused-with-trust-auth",
                        "FACE_ENGINE": "dlib", "DATA_DIR": str(tmp_path / "data")}.items():
        clean_env.setenv(name, value)
    return filled_db


@pytest.fixture
async def filled_pool(conninfo):
    import database
    p = database.async_pool(conninfo, min_size=1, max_size=4)
    await p.open(wait=True)
    yield p
    await p.close()


async def test_forget_a_person(conninfo, filled_pool, matcher, tmp_path, capsys):  # noqa: F811
    with psycopg.connect(conninfo, autocommit=True) as db:
        person, faces = db.execute("""SELECT topic_id, count(*) FROM face_embeddings WHERE topic_id IS NOT NULL
                                      GROUP BY topic_id ORDER BY count(*) DESC LIMIT 1""").fetchone()
        media = [r[0] for r in db.execute("SELECT DISTINCT media_item_id FROM face_embeddings WHERE topic_id = %s "
                                          "ORDER BY 1", (person,))]
        assert faces == 5 and len(media) >= 2
        posted = db.execute("""INSERT INTO uploaded_media (topic_id, source_chat_id, source_message_id, media_item_id,
                                   status, uploaded_message_id, uploaded_at)
                               SELECT %s, source_chat_id, source_message_id, id, 'posted', 42, now()
                               FROM media_items WHERE id = %s
                               ON CONFLICT (topic_id, media_item_id) DO UPDATE SET status = 'posted',
                                   uploaded_message_id = 42, uploaded_at = now()
                               RETURNING id""", (person, media[0])).fetchone()[0]
        due = db.execute("""INSERT INTO uploaded_media (topic_id, source_chat_id, source_message_id, media_item_id)
                            SELECT %s, source_chat_id, source_message_id, id FROM media_items WHERE id = %s
                            ON CONFLICT (topic_id, media_item_id) DO UPDATE SET status = 'pending'
                            RETURNING id""", (person, media[1])).fetchone()[0]
        db.execute("UPDATE telegram_topics SET label = 'Joe', label_is_manual = TRUE, topic_id = 77 WHERE id = %s",
                   (person,))
        db.execute("DELETE FROM dashboard_actions")

    assert main.main(["--env-file", str(tmp_path / "none.env"), "forget", str(person)]) == 2   # asks for --yes
    assert main.main(["--env-file", str(tmp_path / "none.env"), "forget", str(person), "--yes"]) == 0
    assert f"person {person} forgotten: 5 face(s) deleted; 1 post(s) to delete" in capsys.readouterr().out

    with psycopg.connect(conninfo, autocommit=True) as db:
        assert db.execute("SELECT count(*) FROM face_embeddings WHERE topic_id = %s", (person,)).fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM face_embeddings WHERE state = 'review' AND review_candidates::text "
                          "LIKE %s", (f'%"person_id": {person},%',)).fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM merge_suggestions WHERE %s IN (person_a, person_b)",
                          (person,)).fetchone() == (0,)
        label, hidden, count, cover = db.execute("SELECT label, hidden, embedding_count, cover_face_id "
                                                 "FROM telegram_topics WHERE id = %s", (person,)).fetchone()
        assert (label, hidden, count, cover) == ("Erased person", True, 0, None)
        statuses = dict(db.execute("SELECT id, status FROM uploaded_media WHERE id IN (%s, %s)", (posted, due)))
        assert statuses == {posted: "posted", due: "cancelled"}     # the posted one: deleted by the action
        actions = db.execute("SELECT action, payload FROM dashboard_actions ORDER BY id").fetchall()
        assert actions == [("delete_posts", {"person_id": person, "uploaded_media_ids": [posted]}),
                           ("rename_topic", {"person_id": person, "title": "Erased person"}),
                           ("hide_person", {"person_id": person})]
        key = db.execute("SELECT media_key FROM media_items WHERE id = %s", (media[0],)).fetchone()[0]
        assert "Joe" not in str(db.execute("SELECT array_agg(label) FROM telegram_topics").fetchone())

    # the same photo arrives again in another message: it is not analysed again, nobody is rebuilt
    again = add_job(conninfo, 999, chat_id=-1009, media_key=key)
    analyser = Analyser()
    workers = make_pool(filled_pool, analyser=analyser, matcher=matcher)
    await run_until(workers, conninfo, [again])
    assert job_row(conninfo, again)["status"] == "done" and analyser.calls == []
    with psycopg.connect(conninfo) as db:
        assert db.execute("SELECT count(*) FROM face_embeddings WHERE topic_id = %s", (person,)).fetchone() == (0,)
