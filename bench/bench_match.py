"""Benchmark the matcher's k-NN query on synthetic face embeddings: HNSW against an exact scan.

    .venv/bin/python bench/bench_match.py                       # 100k and 200k faces, 512-d
    .venv/bin/python bench/bench_match.py --sizes 20000 --queries 100   # a quick look

It starts its own PostgreSQL (`database.embedded_server`, in a temporary directory, like
tests/conftest.py), migrates it to the app's schema, and for each size:
  1. loads synthetic faces (see `synthetic_faces`) into face_embeddings with COPY;
  2. builds the HNSW index from scratch with the given m / ef_construction, timed;
  3. runs the matcher's own query (`persons_knn` in sql/persons.sql, with the matcher's k and
     similarity floor) for new faces of known persons and for strangers, once per
     hnsw.ef_search value, and reports p50/p95 latency (client side, one query at a time);
  4. compares with the exact answer (brute force in numpy; PostgreSQL's own exact scan, the
     same query with index scans off, is timed on a few queries): recall@10 (the share of the
     exact 10 nearest that HNSW returned) and recall of the neighbours that matter to the
     matcher (those of its top k at or above its lowest threshold, the merge-suggestion floor).
Figures (2 cores, pgserver's PostgreSQL 16 + pgvector 0.6.2, structured noise, seed 7, 400
queries; p95 latency / recall@10 (known persons, strangers) / recall of the neighbours at or
above the floor 0.4375 — the only ones the matcher uses):

    bench/bench_match.py --ef-search 40 64 100 200             (m=16, ef_construction=200)
      100k: exact scan p95 312 ms; build 126 s, index 260 MB
        ef_search  40:  4.1 ms  0.636 (0.700, 0.378)  0.984
        ef_search  64:  5.4 ms  0.692 (0.746, 0.475)  0.993
        ef_search 100:  7.4 ms  0.754 (0.797, 0.579)  0.997
        ef_search 200: 12.7 ms  0.851 (0.870, 0.775)  1.000
      200k: exact scan p95 608 ms; build 298 s, index 521 MB
        ef_search  40:  6.7 ms  0.725 (0.832, 0.297)  0.992
        ef_search  64:  8.1 ms  0.765 (0.859, 0.390)  0.997
        ef_search 100: 11.2 ms  0.802 (0.880, 0.494)  0.998
        ef_search 200: 18.4 ms  0.864 (0.917, 0.652)  0.999
    bench/bench_match.py --sizes 200000 --m 32 --ef-construction 128 --ef-search 64 100 200
      200k: build 512 s, index 521 MB
        ef_search  64: 15.0 ms  0.824 (0.902, 0.515)  0.999
        ef_search 100: 20.9 ms  0.862 (0.919, 0.632)  1.000
        ef_search 200: 35.0 ms  0.928 (0.957, 0.812)  1.000
    bench/bench_match.py --sizes 200000 --shared-buffers 1GB --ef-search 64 100 200
      200k (m=16, ef_construction=200; the index fits in shared_buffers): build 456 s
        ef_search  64:  5.5 ms  0.762 (0.852, 0.400)  0.990
        ef_search 100:  7.6 ms  0.805 (0.881, 0.502)  0.998
        ef_search 200: 13.5 ms  0.875 (0.920, 0.696)  0.999

    bench/bench_match.py --sizes 200000 --ef-search 100 --exact-queries 5   (the choice, again)
      200k (m=16, ef_construction=200, 128 MB shared_buffers): build 428 s
        ef_search 100: 12.1 ms  0.807 (0.888, 0.486)  0.998

    bench/bench_match.py --sizes 200000 --shared-buffers 1GB --ef-search 100 200 --exact-queries 5
      200k: local intrinsic dimensionality (median) known persons 11, strangers 82; build 415 s
        ef_search 100:  9.1 ms  0.798 (0.876, 0.486)  0.998
        ef_search 200: 14.0 ms  0.872 (0.919, 0.685)  1.000
    ... --ef-construction 400 (Immich's 300 and more): build 769 s
        ef_search 100:  8.7 ms  0.814 (0.886, 0.524)  0.999
        ef_search 200: 14.2 ms  0.879 (0.923, 0.703)  0.999

(The machine was slower during the last three runs: the same exact scan took p50 903-1107 ms
against 596 ms in the first, so their latencies are pessimistic next to the first run's.)

Chosen: m=16, ef_construction=200 (unchanged, migrations/0002) and hnsw.ef_search=100
(identity_matcher.DEFAULT_EF_SEARCH): p95 11.2 ms at 200k with the server's default 128 MB
shared_buffers (7.6 ms when the index fits in shared_buffers), and 0.998 of the neighbours the
matcher acts on. Issue 4's "recall@10 >= 0.95 at p95 <= 15 ms" is not met by any setting tried:
the raw top-10 of a face of a known person holds its few faces of that person (found) and then
faces of other people (0 +- 0.07 cosine in this model), nearly equidistant from the query,
which an HNSW graph finds only at great cost (a stranger's top-10 is all such faces: around
a stranger the data have a local intrinsic dimensionality of ~80, that of random points, while
around a known person's face it is ~11). Those are below the matcher's floor and it drops
them, so they do not change a decision. Whether real strangers' neighbourhoods are as
featureless can only be told with real embeddings at this scale. m=32 reaches
0.928 only at 35 ms (23 ms even allowing for the slower machine), and what it adds is in that
discarded region (the floor recall is 0.998 already), while changing m means rebuilding a
500 MB index on upgrade: m stays 16. ef_construction 400 adds 0.01 of recall@10 for
twice the build time: it stays 200. The matcher filters after the top-k (see `persons_knn`)
and so needs no iterative scan; database.SESSION_SETTINGS turns it on for queries that filter
inside. These figures were measured on the old embedded server (pgserver 0.1.4, pgvector
0.6.2); the embedded server is now pgvector 0.8.5 like production, and bench/bench_scale.py
measures it up to a million faces (docs/SCALING.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import database  # noqa: E402
from database import queries  # noqa: E402
from identity_matcher import MatchParams  # noqa: E402


@dataclass
class FaceModel:
    """Synthetic identities and the faces they show; see `synthetic_faces`."""

    identity_basis: np.ndarray           # (dim, 96): where identities differ
    nuisance_basis: np.ndarray | None    # (dim, 64): where one person's faces differ; None: anywhere
    centres: np.ndarray = field(default=None)  # type: ignore[assignment]
    spreads: np.ndarray = field(default=None)  # type: ignore[assignment]

    @property
    def dim(self) -> int:
        return self.identity_basis.shape[0]

    def identities(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Centres of new persons (also one-off strangers' faces)."""
        k = self.identity_basis.shape[1]
        return _unit((rng.standard_normal((count, k)) / np.sqrt(k)) @ self.identity_basis.T
                     + 0.5 * rng.standard_normal((count, self.dim)) / np.sqrt(self.dim))

    def faces(self, person: int, count: int, rng: np.random.Generator) -> np.ndarray:
        """`count` faces of person `person` (an index into `centres`)."""
        iso = rng.standard_normal((count, self.dim)) / np.sqrt(self.dim)
        if self.nuisance_basis is None:
            noise = iso
        else:  # pose, light, expression: mostly the same few directions for everybody
            k = self.nuisance_basis.shape[1]
            noise = (0.9 * (rng.standard_normal((count, k)) / np.sqrt(k)) @ self.nuisance_basis.T
                     + 0.44 * iso)
        return _unit(self.centres[person] + self.spreads[person] * noise)


def synthetic_faces(count: int, dim: int, rng: np.random.Generator, *, structured: bool = True,
                    stranger_share: float = 0.1) -> tuple[np.ndarray, np.ndarray, FaceModel]:
    """`count` unit vectors shaped like ArcFace embeddings of a photo archive.

    Persons have a random centre made mostly of a 96-dimensional subspace (plus a smaller
    isotropic part), so faces of different persons agree at 0 +- 0.07 cosine, like ArcFace's
    impostor pairs. A person's faces are the centre plus Gaussian noise of norm s, s uniform in
    [0.65, 1.0]: faces of one person agree at 0.5-0.7, the spread of ArcFace over pose, light
    and age. `structured`: that noise lies mostly in a 64-dimensional subspace shared by
    everybody (deep face embeddings have a low intrinsic dimensionality: ~16 for SphereFace's
    512-d, Gong, Boddeti & Jain, CVPR 2019); otherwise it is isotropic in all 512 dimensions,
    the worst case for an ANN index. Person sizes are log-normal (median ~8, mean ~20, a few
    with hundreds); `stranger_share` of the rows are one-off strangers (pending). Returns
    (embeddings in arrival order, person of each row (0 = stranger), the model).
    """
    bases = np.linalg.qr(rng.standard_normal((dim, 96 + 64)))[0]
    model = FaceModel(bases[:, :96], bases[:, 96:] if structured else None)
    rows, person = populate(model, count, rng, stranger_share=stranger_share)
    return rows, person, model


def populate(model, count: int, rng: np.random.Generator, *, mean: float = 2.1,
             sigma: float = 1.1, stranger_share: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """`count` faces of `model` (a FaceModel, or anything with its `identities` and `faces`) in
    arrival order: persons of log-normal sizes (log-mean `mean`, log-sd `sigma`; the model's
    centres and spreads are set to theirs), then `stranger_share` of the rows one-off
    strangers, all shuffled. Returns (embeddings, person of each row (0 = stranger))."""
    persons_rows = int(count * (1 - stranger_share))
    sizes: list[int] = []
    while sum(sizes) < persons_rows:
        sizes.append(max(1, int(rng.lognormal(mean=mean, sigma=sigma))))
    sizes[-1] -= sum(sizes) - persons_rows
    model.centres = model.identities(len(sizes), rng)
    model.spreads = rng.uniform(0.65, 1.0, len(sizes))
    rows = np.empty((count, model.dim), dtype=np.float32)
    person = np.zeros(count, dtype=np.int64)
    at = 0
    for index, size in enumerate(sizes):
        rows[at:at + size] = model.faces(index, size, rng)
        person[at:at + size] = index + 1
        at += size
    rows[at:] = model.identities(count - at, rng)
    order = rng.permutation(count)  # arrival order: persons interleaved, as in a real archive
    return rows[order], person[order]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def query_faces(model: FaceModel, persons_in_db: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """New faces to match: 80 % of persons already stored, 20 % strangers."""
    known = int(n * 0.8)
    faces = [model.faces(int(p), 1, rng)[0] for p in rng.integers(0, persons_in_db, known)]
    return np.vstack([np.array(faces), model.identities(n - known, rng)]).astype(np.float32)


def load(conn: psycopg.Connection, rows: np.ndarray, person: np.ndarray, first_message: int) -> None:
    with conn.cursor() as cur, cur.copy(queries.bench_copy_faces) as copy:
        copy.set_types(["integer", "text", "bigint", "bigint", "real", "vector"])
        for i, (emb, pid) in enumerate(zip(rows, person)):
            copy.write_row((int(pid) if pid else None, "assigned" if pid else "pending",
                            -1001, first_message + i, 0.8, emb))
    conn.commit()


def build_index(conninfo: str, m: int, ef_construction: int, memory: str, workers: int) -> float:
    with psycopg.connect(conninfo, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        conn.execute(queries.bench_drop_index)
        conn.execute(queries.bench_build_settings, {"memory": memory, "workers": str(workers)})
        start = time.perf_counter()
        conn.execute(queries.bench_create_index, {"m": m, "ef_construction": ef_construction})
        return time.perf_counter() - start


def run_queries(conn: psycopg.Connection, faces: np.ndarray, *, k: int, min_similarity: float,
                ef_search: int | None) -> tuple[list[float], list[list[int]]]:
    """Latencies (ms) and returned face ids, one query at a time; ef_search None = exact scan."""
    latencies, results = [], []
    with conn.transaction():
        if ef_search is None:
            conn.execute(queries.bench_exact_scan)
        else:
            conn.execute(queries.persons_set_ef_search, {"ef_search": str(ef_search)})
        for face in faces:
            start = time.perf_counter()
            rows = conn.execute(queries.persons_knn, {
                "embedding": face, "k": k, "min_similarity": min_similarity,
                "media_item_id": None, "skip_ids": [], "with_embedding": False}).fetchall()
            latencies.append((time.perf_counter() - start) * 1000)
            results.append([r[0] for r in rows])
    return latencies, results


def exact_neighbours(rows: np.ndarray, ids: np.ndarray, faces: np.ndarray, params: MatchParams
                     ) -> tuple[list[list[int]], list[list[int]], list[float]]:
    """By brute force: the true top-10 ids, the true answer of the matcher's query, and the
    local intrinsic dimensionality around each query (see `local_dimensionality`)."""
    top10, floor, lid = [], [], []
    width = max(20, params.k)
    for start in range(0, len(faces), 50):
        sims = faces[start:start + 50] @ rows.T
        order = np.argsort(-sims, axis=1)[:, :width]
        for q, idx in enumerate(order):
            top10.append([int(ids[i]) for i in idx[:10]])
            floor.append([int(ids[i]) for i in idx[:params.k]
                          if sims[q, i] >= params.suggest_threshold])
            lid.append(local_dimensionality(sims[q, idx[:20]]))
    return top10, floor, lid


def local_dimensionality(similarities: np.ndarray) -> float:
    """The maximum-likelihood estimate of the local intrinsic dimensionality (Levina & Bickel,
    2004) from a query's nearest neighbours (cosine similarities, best first): how fast the
    number of neighbours grows with the distance. It is what makes a query hard for a graph
    index (Aumüller & Ceccarello, 2019): ~10-20 where the data lie on a low-dimensional
    manifold, close to the ambient dimension for random points."""
    distances = np.sqrt(np.maximum(2.0 - 2.0 * similarities.astype(np.float64), 1e-12))
    return float((len(distances) - 1) / np.sum(np.log(distances[-1] / distances[:-1])))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 200_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, nargs="+", default=[200])
    parser.add_argument("--ef-search", type=int, nargs="+", default=[20, 40, 64, 100])
    parser.add_argument("--build-memory", default="4GB")
    parser.add_argument("--build-workers", type=int, default=1,
                        help="parallel workers besides the leader when building the index")
    parser.add_argument("--exact-queries", type=int, default=20,
                        help="queries timed with PostgreSQL's exact scan (slow)")
    parser.add_argument("--shared-buffers", help="e.g. 1GB (default: the server's, 128MB)")
    parser.add_argument("--noise", choices=["structured", "isotropic"], default="structured",
                        help="how one person's faces vary (see synthetic_faces)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    params = MatchParams.for_engine("insightface")
    rng = np.random.default_rng(args.seed)
    total = max(args.sizes)
    print(f"generating {total} synthetic {args.dim}-d faces ({args.noise} noise) …", flush=True)
    rows, person, model = synthetic_faces(total, args.dim, rng, structured=args.noise == "structured")
    persons = int(person.max())

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that `finally` stops the server
    base = Path(tempfile.mkdtemp(prefix="fa-bench-"))
    os.chmod(base, 0o755)
    server = database.embedded_server(base / "pgdata", cleanup_mode="delete")
    try:
        admin = server.get_uri("postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier("bench")))
        params_dict = conninfo_to_dict(admin)
        params_dict["dbname"] = "bench"
        conninfo = make_conninfo(**params_dict)
        if args.shared_buffers:
            with psycopg.connect(admin, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
                conn.execute(queries.bench_set_shared_buffers, {"value": args.shared_buffers})
            # restart reuses the options of the last start (postmaster.opts): same socket
            database.embedded_pg_ctl(server, "-w", "restart")
        with psycopg.connect(admin) as conn:
            buffers = conn.execute(queries.bench_show_shared_buffers).fetchone()[0]
        database.migrate(conninfo)
        database.ensure_engine(conninfo, "insightface", args.dim)
        with psycopg.connect(conninfo) as conn:
            from pgvector.psycopg import register_vector
            register_vector(conn)
            conn.execute(queries.bench_create_persons, {"count": persons})
            conn.commit()
            conn.execute(queries.bench_drop_index)
            conn.commit()
            print(f"matcher query: k={params.k}, similarity floor {params.suggest_threshold} "
                  f"(insightface defaults); {args.queries} queries, 80% known persons; "
                  f"shared_buffers {buffers}", flush=True)
            loaded = 0
            for size in sorted(args.sizes):
                conn.execute(queries.bench_drop_index)  # bulk load first, then build
                conn.commit()
                start = time.perf_counter()
                load(conn, rows[loaded:size], person[loaded:size], loaded)
                load_s = time.perf_counter() - start
                loaded = size
                conn.execute(queries.bench_analyze)
                conn.commit()
                in_db = int(person[:size].max())
                qrng = np.random.default_rng(args.seed + size)
                faces = query_faces(model, in_db, args.queries, qrng)
                ids = np.array([r[0] for r in conn.execute(queries.bench_face_ids).fetchall()])
                exact_ids, exact_floor, lid = exact_neighbours(rows[:size], ids, faces, params)
                # The database's own exact scan, for its latency only (it is slow: a few queries).
                exact_lat, db_exact = run_queries(conn, faces[:args.exact_queries], k=10,
                                                  min_similarity=-1.0, ef_search=None)
                agree = statistics.mean(len(set(a) & set(e)) / 10
                                        for a, e in zip(db_exact, exact_ids))
                known = int(len(faces) * 0.8)  # query_faces: known persons first
                print(f"\n=== {size} faces ({in_db} persons; COPY {load_s:.0f} s) ===")
                print(f"local intrinsic dimensionality around the queries (median, 20 nearest): "
                      f"known persons {statistics.median(lid[:known]):.0f}, "
                      f"strangers {statistics.median(lid[known:]):.0f}")
                print(f"exact scan in PostgreSQL: p50 {percentile(exact_lat, 50):.1f} ms, "
                      f"p95 {percentile(exact_lat, 95):.1f} ms ({len(exact_lat)} queries; "
                      f"same top-10 as numpy: {agree:.3f})", flush=True)
                for efc in args.ef_construction:
                    build_s = build_index(conninfo, args.m, efc, args.build_memory, args.build_workers)
                    index_bytes, table_bytes = conn.execute(queries.bench_index_size).fetchone()
                    conn.commit()
                    print(f"HNSW m={args.m} ef_construction={efc}: build {build_s:.0f} s "
                          f"({args.build_workers + 1} processes), index {index_bytes / 2**20:.0f} MB, "
                          f"table {table_bytes / 2**20:.0f} MB", flush=True)
                    for ef in args.ef_search:
                        run_queries(conn, faces[:20], k=params.k,  # warm-up
                                    min_similarity=params.suggest_threshold, ef_search=ef)
                        lat, ids = run_queries(conn, faces, k=params.k,
                                               min_similarity=params.suggest_threshold, ef_search=ef)
                        _, ids10 = run_queries(conn, faces, k=10, min_similarity=-1.0, ef_search=ef)
                        per_query = [len(set(a) & set(e)) / len(e) for a, e in zip(ids10, exact_ids)]
                        recall10 = statistics.mean(per_query)
                        recall10_known = statistics.mean(per_query[:known])
                        recall10_strangers = statistics.mean(per_query[known:])
                        floor_pairs = [(set(a), set(e)) for a, e in zip(ids, exact_floor) if e]
                        recall_floor = (sum(len(a & e) for a, e in floor_pairs)
                                        / max(1, sum(len(e) for _, e in floor_pairs)))
                        print(f"  ef_search={ef:4d}: p50 {percentile(lat, 50):5.1f} ms, "
                              f"p95 {percentile(lat, 95):5.1f} ms, recall@10 {recall10:.3f} "
                              f"(known {recall10_known:.3f}, strangers {recall10_strangers:.3f}), "
                              f"recall of neighbours >= {params.suggest_threshold} "
                              f"{recall_floor:.3f}", flush=True)
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
