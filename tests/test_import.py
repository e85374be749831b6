"""`python main.py import EXPORT_DIR`: a Telegram Desktop export built from tests/faces,
imported by the real command (a subprocess) with the real dlib engine into a real database."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import psycopg
import psycopg.sql
import pytest
from telethon import types, utils

import database
import exports
from conftest import FACES_DIR, ROOT
from media_fixtures import letterbox, write_video

SUPERGROUP = 1234567890          # the bare id Telegram Desktop writes
MARKED = utils.get_peer_id(types.PeerChannel(SUPERGROUP))

# (message id, file in tests/faces). Obama and Biden are seen often enough to become persons;
# Kamala Harris and Eileen Collins once each, like the unnamed people of the Situation Room.
PHOTOS = [
    (10, "barack_obama_01.jpg"), (11, "joe_biden_01.jpg"), (12, "kamala_harris_01.jpg"),
    (13, "barack_obama_02.jpg"), (14, "joe_biden_02.jpg"), (15, "noface_cat.png"),
    (16, "barack_obama_03.jpg"), (17, "eileen_collins_01.jpg"), (18, "joe_biden_03.jpg"),
    (19, "barack_obama_04.jpg"), (20, "group_obama_biden_composite.jpg"),
    (21, "group_situation_room_2011.jpg"),
    (22, "barack_obama_01.jpg"),  # the same photo posted again: analysed once
]
VIDEO_ID = 30                    # a short video of Joe Biden


def message(mid: int, **media) -> dict:
    return {"id": mid, "type": "message", "date": "2021-03-01T10:00:00",
            "date_unixtime": str(1614592800 + mid), "from": "Someone", "from_id": "user42", "text": "",
            **media}


def build_export(target: Path, faces_dir: Path, photos=PHOTOS, *, video: bool = True) -> Path:
    """A single-chat JSON export as Telegram Desktop writes it: result.json, photos/, video_files/."""
    (target / "photos").mkdir(parents=True)
    messages = [{"id": 1, "type": "service", "date": "2021-03-01T09:00:00", "action": "create_group"}]
    for mid, name in photos:
        suffix = Path(name).suffix
        rel = f"photos/photo_{mid}@01-03-2021_10-00-00{suffix}"
        shutil.copyfile(faces_dir / name, target / rel)
        messages.append(message(mid, photo=rel, width=800, height=600))
    messages.append(message(2, photo="(File not included. Change data exporting settings to download.)"))
    messages.append(message(3, file="stickers/sticker.webp", media_type="sticker", mime_type="image/webp"))
    if video:
        (target / "video_files").mkdir()
        frame = letterbox(faces_dir / "joe_biden_02.jpg", (640, 480))
        write_video(target / "video_files" / "biden.mp4", [(frame, 2.0)])
        messages.append(message(VIDEO_ID, file="video_files/biden.mp4", media_type="video_file",
                                mime_type="video/mp4", duration_seconds=2))
    (target / "result.json").write_text(json.dumps(
        {"name": "Family", "type": "private_supergroup", "id": SUPERGROUP, "messages": messages}))
    return target


def run_main(tmp_path: Path, conninfo: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    env = {k: v for k, v in os.environ.items()
           if k in {"PATH", "HOME", "LANG", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "XDG_RUNTIME_DIR"}}
    env |= {"POSTGRES_HOST": params["host"], "POSTGRES_DB": params["dbname"], "POSTGRES_USER": params["user"],
            "POSTGRES_PASSWORD": "unused-with-trust-auth", "FACE_ENGINE": "dlib", "NUM_WORKERS": "2",
            "DATA_DIR": str(tmp_path / "data")}
    return subprocess.run([sys.executable, str(ROOT / "main.py"), "--env-file", str(tmp_path / "none.env"), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def snapshot(conninfo: str) -> dict:
    with psycopg.connect(conninfo) as conn:
        count = psycopg.sql.SQL("SELECT count(*) FROM {}")
        return {table: conn.execute(count.format(psycopg.sql.Identifier(table))).fetchone()[0]
                for table in ("media_jobs", "media_items", "face_embeddings", "telegram_topics", "uploaded_media")}


@pytest.fixture(scope="module")
def imported(tmp_path_factory, admin_conninfo, template_db):
    """The export imported once into a fresh database (the analysis is the slow part)."""
    from conftest import create_database
    import database

    base = tmp_path_factory.mktemp("import")
    export = build_export(base / "export", FACES_DIR)
    db = create_database(admin_conninfo, template_db)
    database.ensure_engine(db, "dlib", 128)
    done = run_main(base, db, "import", str(export))
    return base, export, db, done


def test_the_import_creates_the_people_seen_often_and_nobody_else(imported, face_labels):
    """Every photo of Obama goes to one person and every photo of Biden to another; the
    people seen once (Harris, Collins, the Situation Room's unnamed) make no person."""
    _, _, db, done = imported
    assert done.returncode == 0, done.stderr[-3000:]
    with psycopg.connect(db) as conn:
        persons = [r[0] for r in conn.execute("SELECT id FROM telegram_topics WHERE merged_into IS NULL")]
        rows = conn.execute(
            """SELECT u.topic_id, j.source_message_id FROM uploaded_media u
               JOIN media_jobs j ON j.media_item_id = u.media_item_id""").fetchall()
    files = dict(PHOTOS) | {VIDEO_ID: "video of joe_biden"}
    posted: dict[int, set[str]] = {}
    for person, message_id in rows:
        posted.setdefault(person, set()).add(files[message_id])
    assert len(persons) == 2 and sorted(posted) == sorted(persons)
    obama, biden = sorted(persons, key=lambda p: "barack_obama_01.jpg" not in posted[p])
    single = {name: who[0] for name, who in face_labels.items() if len(who) == 1 and name in files.values()}
    # barack_obama_04 is 0.914 like Obama's other faces on average, below dlib's join threshold
    # (0.93, calibrated on faces-lfw): it waits in the pending pool rather than join at the
    # edge of the person (issue 14). It is never posted to the wrong person (below).
    edge = {"barack_obama_04.jpg"}
    assert {n for n, who in single.items() if who == "barack_obama"} - edge <= posted[obama]
    assert {n for n, who in single.items() if who == "joe_biden"} | {"video of joe_biden"} <= posted[biden]
    for person, others in ((obama, "joe_biden"), (biden, "barack_obama")):
        assert not {n for n in posted[person] if single.get(n) == others}, "a photo in the wrong person"
    seen_once = {"kamala_harris_01.jpg", "eileen_collins_01.jpg", "noface_cat.png"}
    assert not seen_once & (posted[obama] | posted[biden])
    assert "group_obama_biden_composite.jpg" in posted[obama] & posted[biden]
    assert "persons: 2 " in done.stdout


def test_every_file_is_accounted_for_and_posts_wait_for_the_hub(imported):
    _, export, db, done = imported
    with psycopg.connect(db) as conn:
        jobs = conn.execute("SELECT source_chat_id, source_message_id, status, origin, staged_owned, staged_path "
                            "FROM media_jobs ORDER BY source_message_id").fetchall()
        items = conn.execute("SELECT count(*), count(*) FILTER (WHERE status = 'analysed') FROM media_items").fetchone()
        posts = conn.execute("SELECT status, count(*) FROM uploaded_media GROUP BY status").fetchall()
        per_item = conn.execute("SELECT count(*) FROM uploaded_media GROUP BY topic_id, media_item_id "
                                "HAVING count(*) > 1").fetchall()
    assert [j[1] for j in jobs] == sorted([mid for mid, _ in PHOTOS] + [VIDEO_ID])
    assert {j[0] for j in jobs} == {MARKED} == {-1001234567890}
    assert all(j[2] == "done" and j[3] == "export" and j[4] is False for j in jobs)
    assert items == (len(PHOTOS), len(PHOTOS))           # 13 photo messages, one photo twice, + video
    assert dict(posts)["pending"] >= 6 and set(dict(posts)) == {"pending"}
    assert per_item == []
    for *_, path in jobs:                                # the operator's files are left alone
        assert Path(path).is_file() and Path(path).is_relative_to(export)
    assert "1 not included in the export" in done.stdout


def test_importing_the_same_export_again_adds_nothing(imported):
    base, export, db, _ = imported
    before = snapshot(db)
    again = run_main(base, db, "import", str(export))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "jobs: 0 new" in again.stdout
    assert snapshot(db) == before


def test_a_folder_that_is_not_an_export_is_refused_clearly(tmp_path, db_conninfo):
    (tmp_path / "messages.html").write_text("<html></html>")
    done = run_main(tmp_path, db_conninfo, "import", str(tmp_path))
    assert done.returncode == 2
    assert "result.json" in done.stderr and "JSON format" in done.stderr
    assert "Traceback" not in done.stderr


def test_chat_ids_become_the_ids_the_api_uses(tmp_path):
    assert exports.marked_chat_id(SUPERGROUP, "public_channel") == utils.get_peer_id(types.PeerChannel(SUPERGROUP))
    assert exports.marked_chat_id(4321, "private_group") == utils.get_peer_id(types.PeerChat(4321))
    assert exports.marked_chat_id(777, "personal_chat") == utils.get_peer_id(types.PeerUser(777))
    assert exports.marked_chat_id(777, "saved_messages") == 777
    with pytest.raises(exports.ExportError):
        exports.marked_chat_id(1, "something_new")


def test_a_full_account_export_reads_every_chat(tmp_path, faces_dir):
    (tmp_path / "chats" / "chat_001" / "photos").mkdir(parents=True)
    (tmp_path / "chats" / "chat_002" / "round_video_messages").mkdir(parents=True)
    shutil.copyfile(faces_dir / "joe_biden_01.jpg", tmp_path / "chats/chat_001/photos/a.jpg")
    (tmp_path / "chats/chat_002/round_video_messages/r.mp4").write_bytes(b"\0" * 10)
    (tmp_path / "chats/chat_002/gif.mp4").write_bytes(b"\0" * 10)
    (tmp_path / "chats/chat_002/doc.png").write_bytes(b"\0" * 10)
    data = {"about": "…", "personal_information": {"user_id": 5},
            "chats": {"about": "…", "list": [
                {"name": "Mum", "type": "personal_chat", "id": 777,
                 "messages": [message(5, photo="chats/chat_001/photos/a.jpg")]},
                {"name": "Old group", "type": "private_group", "id": 4321,
                 "messages": [message(6, file="chats/chat_002/round_video_messages/r.mp4",
                                      media_type="video_message", mime_type="video/mp4"),
                              message(7, file="chats/chat_002/gif.mp4", media_type="animation", mime_type="video/mp4"),
                              message(8, file="chats/chat_002/doc.png", mime_type="image/png"),
                              message(9, file="chats/chat_002/voice.ogg", media_type="voice_message",
                                      mime_type="audio/ogg")]}]},
            "left_chats": {"about": "…", "list": [
                {"name": "Gone", "type": "public_supergroup", "id": 99, "messages": [message(1, photo="../../etc/passwd")]}]}}
    (tmp_path / "result.json").write_text(json.dumps(data))
    contents = exports.read_export(tmp_path)
    assert contents.chats == 3 and contents.messages == 6
    assert [(m.chat_id, m.message_id, m.media_type) for m in contents.media] == [
        (777, 5, "photo"), (-4321, 6, "round"), (-4321, 7, "gif"), (-4321, 8, "image")]
    assert contents.not_included == 1                    # a path outside the export is not followed
    assert contents.other_media == Counter({"voice_message": 1})
    assert contents.media[0].date.timestamp() == 1614592805


def test_imported_chats_are_known_by_the_exports_name(imported):
    """The export's name for the chat is stored: the dashboard lists it, and the captions of its
    posts name it (they said "chat -100…")."""
    _, _, db, done = imported
    assert done.returncode == 0, done.stderr[-3000:]
    messages = len(PHOTOS) + 3                          # + one not included, a sticker, the video
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT chat_id, chat_title, export_type, messages, media FROM imported_chats"
                            ).fetchall() == [(MARKED, "Family", "private_supergroup", messages, len(PHOTOS) + 1)]
        item = conn.execute("SELECT min(media_item_id) FROM uploaded_media").fetchone()[0]
        cur = conn.execute(database.queries.upload_sources, {"media_item_id": item, "hub_account_id": None})
        sources = [dict(zip([c.name for c in cur.description], row)) for row in cur.fetchall()]
    assert sources and {s["chat_title"] for s in sources} == {"Family"}
