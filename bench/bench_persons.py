"""Persons made from the faces-lfw photos by the real matcher on a real PostgreSQL; prints figures.

    .venv/bin/python bench/bench_persons.py [--photos N] [--orders 1,2,3]
        [--npz /work/tmp/lfw/lfw_dlib.npz]

The photos' faces come from bench/lfw_embeddings.py's analysis (the dlib FaceProcessor, the
code `main.py import` runs; detection does not depend on the order, so it is done once and
replayed: the printout says so). Faces below MIN_QUALITY_THRESHOLD (0.5) are dropped, as the
daemon drops them. In each order (a seeded shuffle of the photos; the first N of it) every photo
becomes a media item whose faces go through `IdentityMatcher.assign` in one transaction each,
with the engine's default parameters (MatchParams.from_settings), on a fresh database of an
embedded PostgreSQL (database.embedded_server, in a temporary directory, as tests/conftest.py).
Printed per order: pairwise precision (all photos; a photo's person is that of its centred, labelled face)
and recall (over identities with >= 3 photos, and for frequent (>= 10) and occasional (3-9)
people), persons made and the largest one's purity, faces pending / in review, the strangers'
faces left out of every person, photos per second and the matching time against the analysis
time per photo; then the offline average-linkage ceiling on the same centred faces at the
matcher's join threshold (bench/tune_persons.py).

Figures, 2026-12-01, defaults (join 0.93, seed 0.945, support 0.67, cohesion slack 0.025 from 5
faces), 2 cores shared with four other jobs (load average ~12), 1,000 photos:
    .venv/bin/python bench/bench_persons.py --photos 1000 --orders 1,2,3
  order 1: P 0.9937 R 0.700 (frequent 0.722, occasional 0.300), strangers out 0.995, 74 persons,
           largest 13 (purity 1.00), pending 671, review 1; ceiling P 0.9763 R 0.855
  order 2: P 0.9903 R 0.726 (0.750, 0.258), strangers out 0.990, 78 persons; ceiling P 0.949 R 0.897
  order 3: P 0.9866 R 0.697 (0.711, 0.476), strangers out 0.994, 83 persons; ceiling P 0.942 R 0.875
  matching 69-120 ms/photo at that load (12 round trips to PostgreSQL a photo, 2-8 ms each under
  load; 6 ms/photo for the first 100 photos on a quieter moment), against dlib's analysis of
  ~110 ms/photo measured on a quiet machine and 660 ms/photo measured under the same load.
5,130 photos, order 1 (`--photos 5130 --orders 1`): P 0.9934 R 0.706 (0.706, 0.705), strangers
  out 0.994, 354 persons, largest 40 (purity 1.00), pending 2,212, review 266, 87 ms/photo;
  ceiling P 0.9665 R 0.943 (largest purity 0.67).
5,130 photos, order 2, later on a quiet machine (`--photos 5130 --orders 2`): P 0.9936 R 0.761
  (0.765, 0.678), strangers out 0.994, 344 persons, largest 40 (purity 1.00), pending 2,187,
  review 210; 112.5 photos/s through the matcher, matching 7.9 ms/photo = 7 % of the analysis
  measured at the same time (112 ms/photo).
bench/tune_persons.py gives the same persons as this bench (checked: identical figures at 300
and 1,000 photos in orders 1 and 2, and at 5,130 in orders 1 and 2); its figures for the runs
not made here: 3,000 photos P 0.9938 / 0.9938 / 0.9934, R 0.718 / 0.772 / 0.769; 5,130 photos
order 3: P 0.9956, R 0.750, strangers out 0.996.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import database  # noqa: E402
from identity_matcher import IdentityMatcher, MatchParams  # noqa: E402
from lfw_embeddings import DEFAULT_LFW  # noqa: E402
from replay import detected, replay  # noqa: E402
from tune_persons import Data, average_linkage_ceiling, fmt, order, scores  # noqa: E402


async def run_order(conninfo: str, data: Data, photos, params: MatchParams) -> dict:
    """The replay: the stored analysis through IdentityMatcher.assign, one job a photo."""
    pool = database.async_pool(conninfo, min_size=1, max_size=2)
    await pool.open(wait=True)
    try:
        inputs = [[(i, detected(data.emb[i], data.bbox[i], data.quality[i]))
                   for i in data.faces_of[int(ph)]] for ph in photos]
        start = time.perf_counter()
        result = await replay(pool, IdentityMatcher(params), inputs)
        wall = time.perf_counter() - start
    finally:
        await pool.close()
    person_of_photo = [result.face_person.get(int(data.centred[ph])) if data.centred[ph] >= 0
                       else None for ph in photos]
    out = scores(data, photos, person_of_photo)
    states = list(result.face_state.values())
    out.update(pending=states.count("pending"), review=states.count("review"),
               match_ms=1000 * result.seconds / len(photos), wall=wall)
    out["person_of_photo"] = person_of_photo
    return out


EXPORT_CHAT = 1777000014   # the bare id of the export's chat (a private supergroup)
EXPORT_MARKED = -(10**12 + EXPORT_CHAT)


def build_export(target: Path, lfw: Path, files: list[str]) -> Path:
    """A Telegram Desktop single-chat JSON export (as exports.read_export reads it, see
    tests/test_import.py) of the photos `files` (relative to faces-lfw), message k + 1 being
    files[k]. The photos are hard links to faces-lfw (copies on another file system): the
    import refuses files that resolve outside the export, as symlinks would."""
    (target / "photos").mkdir(parents=True)
    messages = [{"id": 0, "type": "service", "date": "2021-03-01T09:00:00",
                 "action": "create_group"}]
    for k, name in enumerate(files):
        rel = f"photos/photo_{k + 1}@01-03-2021_10-00-00.jpg"
        try:
            os.link(lfw / name, target / rel)
        except OSError:
            shutil.copyfile(lfw / name, target / rel)
        messages.append({"id": k + 1, "type": "message", "date": "2021-03-01T10:00:00",
                         "date_unixtime": str(1614592800 + k), "from": "Someone",
                         "from_id": "user42", "text": "", "photo": rel, "width": 250,
                         "height": 250})
    (target / "result.json").write_text(json.dumps(
        {"name": "faces-lfw", "type": "private_supergroup", "id": EXPORT_CHAT,
         "messages": messages}))
    return target


def run_import(base: Path, conninfo: str, export: Path, workers: int) -> tuple[float, str]:
    """`main.py import EXPORT` in a subprocess on the database `conninfo` (dlib, the engine's
    default thresholds, no .env); returns (wall seconds, its stdout)."""
    params = conninfo_to_dict(conninfo)
    env = {k: v for k, v in os.environ.items()
           if k in {"PATH", "HOME", "LANG", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                    "XDG_RUNTIME_DIR"}}
    env |= {"POSTGRES_HOST": params["host"], "POSTGRES_PORT": str(params.get("port") or 5432),
            "POSTGRES_DB": params["dbname"], "POSTGRES_USER": params["user"],
            "POSTGRES_PASSWORD": "unused-with-trust-auth", "FACE_ENGINE": "dlib",
            "NUM_WORKERS": str(workers), "DATA_DIR": str(base / "data")}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "main.py"), "--env-file",
                           str(base / "none.env"), "import", str(export)],
                          cwd=base, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"main.py import failed ({done.returncode}): {done.stderr[-3000:]}")
    return wall, done.stdout


def imported_persons(conninfo: str, n: int) -> tuple[list[int | None], dict[str, int]]:
    """Per message 1..n, the person of its labelled (centred) face as the database holds it,
    and the states of the stored faces. A centred face not stored (a near-duplicate of a face of
    its person) is the one person the photo is due in that no other face of it holds."""
    from lfw_embeddings import centred_face
    faces: dict[int, list[tuple]] = {}
    posts: dict[int, set[int]] = {}
    with psycopg.connect(conninfo) as conn:
        for mid, face_id, person, state, bbox in conn.execute(
                database.queries.bench_import_faces, {"chat_id": EXPORT_MARKED}):
            faces.setdefault(mid, []).append((face_id, person, state, bbox))
        for mid, person in conn.execute(database.queries.bench_import_posts,
                                        {"chat_id": EXPORT_MARKED}):
            posts.setdefault(mid, set()).add(person)
    person_of: list[int | None] = []
    states: dict[str, int] = {}
    for mid in range(1, n + 1):
        mine = sorted(faces.get(mid, []))
        for _, _, state, _ in mine:
            states[state] = states.get(state, 0) + 1
        c = centred_face([b for *_, b in mine], (250, 250)) if mine else -1
        if c >= 0:
            person_of.append(mine[c][1] if mine[c][2] == "assigned" else None)
        else:
            rest = posts.get(mid, set()) - {m[1] for m in mine}
            person_of.append(next(iter(rest)) if len(rest) == 1 else None)
    return person_of, states


def agreement(a: list[int | None], b: list[int | None]) -> float:
    """Pairs of photos together in one person in both runs, over the pairs together in either."""
    def pairs(labels):
        groups: dict[int, list[int]] = {}
        for k, p in enumerate(labels):
            if p is not None:
                groups.setdefault(p, []).append(k)
        return {(x, y) for g in groups.values() for i, x in enumerate(g) for y in g[i + 1:]}
    pa, pb = pairs(a), pairs(b)
    return len(pa & pb) / len(pa | pb) if pa | pb else 1.0


def import_order(base: Path, admin: str, data: Data, photos, seed: int, lfw: Path,
                 workers: int, replayed: list[int | None] | None) -> None:
    """Deliver 1 of issue 14: the photos through `main.py import`, scored from the database."""
    n = len(photos)
    name = f"import_{seed}_{n}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    conninfo = make_conninfo(**(conninfo_to_dict(admin) | {"dbname": name}))
    database.migrate(conninfo)
    database.ensure_engine(conninfo, "dlib", 128)
    export = build_export(base / f"export_{seed}_{n}", lfw, [str(data.files[ph]) for ph in photos])
    wall, stdout = run_import(base, conninfo, export, workers)
    person_of, states = imported_persons(conninfo, n)
    r = scores(data, photos, person_of)
    print(f"order {seed}, through main.py import ({workers} worker(s)): {fmt(r)} pending "
          f"{states.get('pending', 0)} review {states.get('review', 0)}")
    print(f"  {n / wall:.2f} photos/s, analysis and matching ({wall:.0f} s); main.py said: "
          + " | ".join(line for line in stdout.splitlines() if line.startswith("persons")))
    if replayed is not None:
        same = sum((a is None) == (b is None) for a, b in zip(person_of, replayed))
        print(f"  against the replay in the same order: pairs agreement "
              f"{agreement(person_of, replayed):.4f}; photos with/without a person alike "
              f"{same}/{n}", flush=True)
    shutil.rmtree(export, ignore_errors=True)


def analysis_now(lfw: Path, data: Data, count: int) -> float:
    """Mean ms per photo of the daemon's analysis of `count` photos, now (same load as the run)."""
    from media_processor import FaceProcessor
    processor = FaceProcessor("dlib", min_quality=0.5)
    processor.load()
    names = [str(f) for f in data.files[:: max(1, len(data.files) // count)][:count]]
    start = time.perf_counter()
    for name in names:
        processor.detect(lfw / name)
    return 1000 * (time.perf_counter() - start) / len(names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", type=Path, default=Path("/work/tmp/lfw/lfw_dlib.npz"))
    parser.add_argument("--photos", type=int, default=None, help="default: all")
    parser.add_argument("--orders", default="1,2,3", help="shuffle seeds, comma-separated")
    parser.add_argument("--lfw", type=Path, default=DEFAULT_LFW)
    parser.add_argument("--analysis-sample", type=int, default=50,
                        help="photos analysed now, to compare matching with analysis under the "
                             "same machine load (0: only the stored analysis times)")
    parser.add_argument("--import", dest="import_", action="store_true",
                        help="also run the photos through `main.py import` (a Telegram Desktop "
                             "export of them: detection, quality, matcher, real PostgreSQL) and "
                             "compare with the replay")
    parser.add_argument("--import-workers", type=int, default=1,
                        help="NUM_WORKERS of the import (1: photos matched in the export's order, "
                             "as the replay)")
    parser.add_argument("--no-replay", action="store_true", help="with --import: only the import")
    args = parser.parse_args(argv)
    data = Data.load(args.npz)
    n = min(args.photos or len(data.centred), len(data.centred))
    params = MatchParams.for_engine("dlib")
    print(f"faces-lfw, dlib: {n} photos; analysis replayed from {args.npz} (the same for every "
          f"order); matcher: join {params.similarity_threshold}, seed {params.seed_threshold}, "
          f"support {params.min_support}, cohesion slack {params.cohesion_slack}", flush=True)
    now_ms = analysis_now(args.lfw, data, args.analysis_sample) if args.analysis_sample else None
    if now_ms:
        print(f"analysis now (dlib FaceProcessor, MIN_QUALITY 0.5, {args.analysis_sample} "
              f"photos): {now_ms:.0f} ms/photo", flush=True)
    base = Path(tempfile.mkdtemp(prefix="fa-bench-persons-"))
    os.chmod(base, 0o755)
    server = database.embedded_server(base / "pgdata", cleanup_mode="delete")
    try:
        admin = server.get_uri("postgres")
        for seed in [int(s) for s in args.orders.split(",")]:
            name = f"persons_{seed}_{n}"
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            conninfo = make_conninfo(**(conninfo_to_dict(admin) | {"dbname": name}))
            database.migrate(conninfo)
            database.ensure_engine(conninfo, "dlib", 128)
            photos = order(len(data.centred), n, seed)
            if args.no_replay:
                import_order(base, admin, data, photos, seed, args.lfw, args.import_workers, None)
                continue
            r = asyncio.run(run_order(conninfo, data, photos, params))
            analysis_ms = 1000 * float(data.seconds[photos].mean())
            print(f"order {seed}: {fmt(r)}")
            print(f"  {n / r['wall']:.1f} photos/s through the matcher; matching "
                  f"{r['match_ms']:.1f} ms/photo = {r['match_ms'] / analysis_ms:.0%} of the "
                  f"stored analysis time ({analysis_ms:.0f} ms/photo, dlib, measured by "
                  f"lfw_embeddings.py)" + (f", {r['match_ms'] / now_ms:.0%} of the analysis "
                                           f"measured now" if now_ms else ""), flush=True)
            ceiling = average_linkage_ceiling(data, photos, params.similarity_threshold)
            print(f"  offline average linkage at {params.similarity_threshold}: {fmt(ceiling)}",
                  flush=True)
            if args.import_:
                import_order(base, admin, data, photos, seed, args.lfw, args.import_workers,
                             r["person_of_photo"])
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
