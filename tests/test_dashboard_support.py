"""A database filled by the real pipeline, for the dashboard's tests (AppTest and the browser).

No tests here: the builder and fixtures that test_dashboard.py and test_dashboard_browser.py share.

The photos of tests/faces are copied into Telegram Desktop exports and imported the way
`python main.py import EXPORT_DIR` does (exports.run_import): the real `WorkerPool` works the
jobs off with the real `IdentityMatcher`, on the dlib faces that `analysed_faces` (conftest) found
once per run for those very files, and the real dlib engine for anything else. It happens in
three imports, as an operator might have lived it:

1. "Family photos": four photos of Obama, under a cautious setting (join only near-identical
   faces, MIN_FACES_FOR_PERSON=2): Obama comes out as two persons, offered as a merge suggestion;
2. "News pictures": the other photos and a corrupt file, at the thresholds the matcher's behaviour
   tests use for these 16 photos (test_identity_matcher.FIXTURE_THRESHOLDS; at the defaults
   calibrated on faces-lfw, barack_obama_04 rightly waits pending): Biden
   becomes a person, barack_obama_04 joins one of the Obama persons, strangers wait in the
   pending pool, the corrupt file is an error;
3. the operator says barack_obama_04's face is not that person (persons.unassign_faces), and a
   re-encoded copy of the photo arrives in "Old archive": the matcher cannot decide, so the face
   waits for review.

The accounts and watched chats are rows the Telegram side would write. The database is built
once per test run and copied (CREATE DATABASE … TEMPLATE) for every test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import filecmp
import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from PIL import Image
from psycopg import sql

import database
import exports
import persons
from conftest import FACES_DIR, create_database
from identity_matcher import IdentityMatcher, MatchParams
from test_identity_matcher import FIXTURE_THRESHOLDS
from media_processor import MediaError
from processing_queue import JobQueue, RetryPolicy, WorkerConfig, WorkerPool

# Marked ids of the three chats, and what the scanners would have recorded about them.
FAMILY, NEWS, ARCHIVE = -1001000000001, -1001000000002, -1001000000003
CHATS = {FAMILY: ("Family photos", "family_photos", 1200, 1200, "realtime"),
         NEWS: ("News pictures", None, 340, 1000, "backfill"),
         ARCHIVE: ("Old archive", None, 10, 5000, "backfill")}
STEP_1 = ["barack_obama_01.jpg", "barack_obama_03.jpg", "barack_obama_02.jpg", "group_situation_room_2011.jpg"]
REVIEW_PHOTO = "barack_obama_04.jpg"
CORRUPT_FILE = "corrupt.jpg"
FIRST_DAY = datetime(2024, 5, 1, 9, 0, tzinfo=timezone.utc)


class CachedAnalyser:
    """The worker's analyser: for an unchanged copy of a shared photo, the real dlib faces found
    once per test run; for anything else (a re-encoded copy, a corrupt file), the real engine."""

    def __init__(self, analysed_faces: dict, processor):
        self.faces = analysed_faces
        self.processor = processor

    async def analyse(self, path, kind):
        path = Path(path)
        if path.name in self.faces and filecmp.cmp(path, FACES_DIR / path.name, shallow=False):
            return self.faces[path.name]
        return await asyncio.to_thread(self.processor.analyse_file, path, kind=kind)


def write_export(export_dir: Path, chat_id: int, files: list[Path], first_message: int) -> Path:
    """A Telegram Desktop JSON export of one supergroup whose messages carry `files` as photos,
    a day apart."""
    (export_dir / "photos").mkdir(parents=True)
    messages = []
    for number, source in enumerate(files):
        shutil.copyfile(source, export_dir / "photos" / source.name)
        date = FIRST_DAY + timedelta(days=first_message - 500 + number)
        messages.append({"id": first_message + number, "type": "message", "date": date.isoformat(),
                         "date_unixtime": str(int(date.timestamp())), "from": "Archivist",
                         "photo": f"photos/{source.name}", "text": ""})
    export = {"name": CHATS[chat_id][0], "type": "private_supergroup",
              "id": -chat_id - 10**12, "messages": messages}
    (export_dir / "result.json").write_text(json.dumps(export), encoding="utf-8")
    return export_dir


async def run_import(pool, export_dir: Path, matcher: IdentityMatcher, analyser: CachedAnalyser) -> None:
    """`python main.py import export_dir`, with these workers."""
    workers = WorkerPool(JobQueue(pool, owner="dashboard-test", lease_seconds=3.0),
                         config=WorkerConfig(analysis_slots=1, poll_interval=0.05),
                         policy=RetryPolicy(permanent=(MediaError,)), analyser=analyser, matcher=matcher)
    await asyncio.wait_for(exports.run_import(pool, exports.read_export(export_dir), workers, poll=0.05), 60)


def add_accounts_and_chats(conninfo: str) -> None:
    """What init_account.py and the scanners would have recorded."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("""INSERT INTO telegram_accounts (id, phone_number, session_file_path, status,
                            username, display_name, flood_wait_until)
                        VALUES (1, '+447700900123', 'sessions/a.session', 'active', 'archivist', 'Archivist', NULL),
                               (2, '+15550100987', 'sessions/b.session', 'active', NULL, 'Second',
                                now() + interval '25 minutes')""")
        for chat_id, (title, username, done, total, mode) in CHATS.items():
            conn.execute("""INSERT INTO scan_checkpoints (account_id, chat_id, chat_title, chat_username,
                                chat_type, processed_messages, total_messages, scan_mode, skipped_media)
                            VALUES (%s, %s, %s, %s, 'supergroup', %s, %s, %s, %s)""",
                         (1 if chat_id != ARCHIVE else 2, chat_id, title, username, done, total, mode,
                          2 if chat_id == NEWS else 0))


async def build(admin_conninfo: str, template: str, analysed_faces: dict, processor, work_dir: Path,
                name: str = "fa_dashboard_template") -> str:
    """Create database `name` filled as the module docstring says; return its name."""
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    params = psycopg.conninfo.conninfo_to_dict(admin_conninfo) | {"dbname": name}
    conninfo = psycopg.conninfo.make_conninfo(**params)
    database.ensure_engine(conninfo, "dlib", 128)
    add_accounts_and_chats(conninfo)

    corrupt = work_dir / CORRUPT_FILE
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 4)
    resent = work_dir / "resent" / REVIEW_PHOTO
    resent.parent.mkdir()
    Image.open(FACES_DIR / REVIEW_PHOTO).save(resent, quality=85)   # other bytes, the same face
    photos = sorted(p for p in FACES_DIR.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    family = write_export(work_dir / "family", FAMILY, [FACES_DIR / n for n in STEP_1], 500)
    news = write_export(work_dir / "news", NEWS, [p for p in photos if p.name not in STEP_1] + [corrupt], 510)
    archive = write_export(work_dir / "archive", ARCHIVE, [resent], 540)

    analyser = CachedAnalyser(analysed_faces, processor)
    cautious = IdentityMatcher(dataclasses.replace(
        MatchParams.for_engine("dlib", min_faces=2), similarity_threshold=0.99, low_quality_threshold=0.995))
    default = IdentityMatcher(MatchParams.for_engine("dlib", **FIXTURE_THRESHOLDS))
    pool = database.async_pool(conninfo, min_size=1, max_size=3)
    await pool.open(wait=True)
    try:
        await run_import(pool, family, cautious, analyser)
        await run_import(pool, news, default, analyser)
        with psycopg.connect(conninfo) as conn:
            face = conn.execute("""SELECT f.id FROM face_embeddings f
                                   JOIN media_jobs j ON j.media_item_id = f.media_item_id
                                   WHERE j.source_chat_id = %s AND j.staged_path LIKE %s""",
                                (NEWS, f"%/{REVIEW_PHOTO}")).fetchone()[0]
            persons.unassign_faces(conn, [face])
        await run_import(pool, archive, default, analyser)
    finally:
        await pool.close()
    return name


def copy_of(admin_conninfo: str, template: str) -> str:
    """A fresh copy of the filled database (its conninfo)."""
    return create_database(admin_conninfo, template)


# --- fixtures (imported by test_dashboard.py and test_dashboard_browser.py) ----------------------

PASSWORD = "correct horse battery staple"


_filled: dict[str, str] = {}      # the test server's admin conninfo -> its filled database


@pytest.fixture(scope="session")
def filled_template(admin_conninfo, template_db, analysed_faces, dlib_processor, tmp_path_factory) -> str:
    """The name of the filled database that every dashboard test copies, built once per run: each
    module that imports this fixture has a session fixture of its own, and they share the one
    database (nobody writes into it; tests write into their copies)."""
    if admin_conninfo not in _filled:
        _filled[admin_conninfo] = asyncio.run(build(admin_conninfo, template_db, analysed_faces, dlib_processor,
                                                    tmp_path_factory.mktemp("dashboard-pipeline")))
    return _filled[admin_conninfo]


@pytest.fixture
def filled_db(admin_conninfo, filled_template) -> str:
    """A fresh copy of the filled database, for one test."""
    return copy_of(admin_conninfo, filled_template)


def dashboard_environment(monkeypatch, conninfo: str, tmp_path: Path, **extra: str) -> None:
    """The environment a dashboard process reads: the test server through its socket directory
    (POSTGRES_HOST may be one), a password, the dlib engine."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    env = {"POSTGRES_HOST": params["host"], "POSTGRES_PORT": str(params.get("port") or 5432),
           "POSTGRES_DB": params["dbname"], "POSTGRES_USER": params.get("user") or "postgres",
           # trust authentication ignores it; the settings require one with POSTGRES_HOST
           "POSTGRES_PASSWORD": "unused-by-trust-auth", "DASHBOARD_DB_PASSWORD": "unused-by-trust-auth-too",
           "DASHBOARD_PASSWORD": PASSWORD, "FACE_ENGINE": "dlib", "DATA_DIR": str(tmp_path / "data")}
    for name, value in (env | extra).items():
        monkeypatch.setenv(name, value)
