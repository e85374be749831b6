"""Offline tuning of the matcher's rules on the faces-lfw embeddings (numpy, no database).

    .venv/bin/python bench/tune_persons.py [--npz /work/tmp/lfw/lfw_dlib.npz] [--photos N]
        [--orders 1,2,3] [--join 0.93] [--seed 0.94] [--seed-floor F] [--min-faces N]
        [--pending-support] [--wait-near-person] [--impostors] [--ceiling] [--grid]
    (--npz tests/lfw_dlib_subset.npz: the scale test's subset)

Replays the photos (in a seeded random order) through a simulation of identity_matcher's flow —
exact k nearest neighbours, the decision and seeding rules of match_rules.py (the very
functions the real matcher calls), near-duplicates, one person per face of a photo, and the
catch-up of pending faces — and prints the figures bench_persons.py prints, without PostgreSQL.
It also gives the impostor distribution (false-accept rates) and the offline average-linkage
ceiling, so thresholds can be chosen at a stated false-accept rate.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from identity_matcher import MatchParams  # noqa: E402
from match_rules import (Decision, FaceQuery, Neighbour, PendingFace, PersonView,  # noqa: E402
                         RuleParams, decide, may_found, seed_group)

MIN_QUALITY = 0.5      # the daemon's MIN_QUALITY_THRESHOLD
SEED_MIN_QUALITY = 0.7


@dataclass
class SimParams:
    join: float = 0.93
    seed: float = 0.94
    low_quality: float = 0.945
    margin: float = 0.004
    duplicate: float = 0.996
    floor: float = 0.88    # neighbours below are not fetched (the merge-suggestion floor)
    k: int = 16
    seed_k: int = 32
    min_faces: int = 3
    cascade_limit: int = 100
    group_join: bool = True  # a seed group near an existing person joins it instead
    min_support: float = 0.67
    cohesion_slack: float = 0.025
    cohesion_full_size: int = 5
    seed_floor: float | None = None
    pending_support: bool = False
    wait_near_person: bool = False

    def rules(self) -> RuleParams:
        return RuleParams(margin=self.margin, seed_threshold=self.seed, min_faces=self.min_faces,
                          duplicate_similarity=self.duplicate, min_support=self.min_support,
                         cohesion_slack=self.cohesion_slack,
                         cohesion_full_size=self.cohesion_full_size, seed_floor=self.seed_floor,
                         pending_support=self.pending_support,
                         wait_near_person=self.wait_near_person)

    @classmethod
    def from_match(cls, m: MatchParams) -> SimParams:
        """The numbers the real matcher uses (identity_matcher.MatchParams)."""
        return cls(join=m.similarity_threshold, seed=m.seed_threshold,
                   low_quality=m.low_quality_threshold, margin=m.margin,
                   duplicate=m.duplicate_similarity, floor=m.suggest_threshold, k=m.k,
                   seed_k=m.seed_k, min_faces=m.min_faces, cascade_limit=m.cascade_limit,
                   min_support=m.min_support, cohesion_slack=m.cohesion_slack,
                   cohesion_full_size=m.cohesion_full_size, pending_support=m.pending_support,
                   wait_near_person=m.wait_near_person)


@dataclass
class Data:
    emb: np.ndarray          # faces (quality >= MIN_QUALITY)
    photo: np.ndarray        # photo index of each face
    low: np.ndarray
    centred: np.ndarray      # per photo: face index or -1
    identity: np.ndarray     # per photo
    count: np.ndarray        # photos of the identity
    faces_of: list[list[int]] = field(default_factory=list)
    quality: np.ndarray = field(default=None)   # type: ignore[assignment]
    bbox: np.ndarray = field(default=None)      # type: ignore[assignment]
    seconds: np.ndarray = field(default=None)   # type: ignore[assignment]  # analysis, per photo
    files: np.ndarray = field(default=None)     # type: ignore[assignment]  # per photo

    @classmethod
    def load(cls, path: Path) -> Data:
        d = np.load(path)
        keep = d["quality"] >= MIN_QUALITY
        new_index = np.cumsum(keep) - 1
        centred = np.where((d["centred_face"] >= 0) & keep[np.maximum(d["centred_face"], 0)],
                           new_index[np.maximum(d["centred_face"], 0)], -1)
        data = cls(d["embeddings"][keep], d["photo_index"][keep], d["quality"][keep] < SEED_MIN_QUALITY,
                   centred, d["identities"], d["photos_of_identity"])
        data.quality, data.bbox, data.seconds = d["quality"][keep], d["bbox"][keep], d["seconds"]
        data.files = d["files"]
        data.faces_of = [[] for _ in range(len(centred))]
        for i, p in enumerate(data.photo):
            data.faces_of[p].append(i)
        return data

    @classmethod
    def load_subset(cls, path: Path) -> Data:
        """tests/lfw_dlib_subset.npz (faces already at MIN_QUALITY; strangers' identity -1)."""
        d = np.load(path)
        photos = int(d["photo"].max()) + 1
        centred = np.full(photos, -1, np.int64)
        centred[d["photo"][d["is_centred"]]] = np.flatnonzero(d["is_centred"])
        identity = np.array([int(v) if v >= 0 else -(k + 1) for k, v in enumerate(d["identity"])])
        names, counts = np.unique(identity, return_counts=True)
        count = counts[np.searchsorted(names, identity)]
        data = cls(d["embeddings"], d["photo"], d["quality"] < SEED_MIN_QUALITY, centred,
                   identity, count)
        data.quality = d["quality"]
        data.bbox = np.tile(np.array([0, 0, 100, 100], np.float32), (len(d["photo"]), 1))
        data.seconds = np.zeros(photos, np.float32)
        data.faces_of = [[] for _ in range(photos)]
        for i, ph in enumerate(data.photo):
            data.faces_of[ph].append(i)
        return data


class Sim:
    """The matcher's flow over in-memory faces; person ids from 1, face ids = data indices."""

    def __init__(self, data: Data, p: SimParams):
        self.d, self.p, self.rules = data, p, p.rules()
        n = len(data.emb)
        self.stored = np.zeros(n, bool)
        self.person = np.zeros(n, np.int64)      # 0: none
        self.state = np.array(["absent"] * n, dtype=object)
        self.sums: dict[int, np.ndarray] = {}
        self.sizes: dict[int, int] = {}
        self.dup_of: dict[int, int] = {}          # face not stored -> the face it duplicated
        self.next_person = 1
        self.match_seconds = 0.0

    # --- neighbours and views ------------------------------------------------------------------
    def knn(self, x: np.ndarray, k: int, floor: float, exclude_photo: int | None) -> list[Neighbour]:
        idx = np.flatnonzero(self.stored)
        if not len(idx):
            return []
        sims = self.d.emb[idx] @ x
        top = np.argsort(-sims)[:k]
        out = []
        for t in top:
            i, s = int(idx[t]), float(sims[t])
            if s < floor:
                break
            if exclude_photo is not None and self.d.photo[i] == exclude_photo:
                continue
            state = self.state[i]
            out.append(Neighbour(i, int(self.person[i]) if state == "assigned" else None, state,
                                 int(self.d.photo[i]), None, bool(self.d.low[i]), s,
                                 self.d.emb[i]))
        return out

    def views(self, queries: list[FaceQuery]) -> dict[int, PersonView]:
        ids = {n.person_id for q in queries for n in q.neighbours if n.person_id is not None}
        return {pid: PersonView(pid, self.sizes[pid], self.sums[pid] / self.sizes[pid]) for pid in ids}

    def threshold(self, i: int) -> float:
        return self.p.low_quality if self.d.low[i] else self.p.join

    def query(self, i: int, neighbours: list[Neighbour]) -> FaceQuery:
        return FaceQuery(self.d.emb[i], self.threshold(i), neighbours)

    def taken(self, photo: int, except_face: int | None = None) -> set[int]:
        return {int(self.person[j]) for j in self.d.faces_of[photo]
                if j != except_face and self.state[j] == "assigned"}

    # --- changes -------------------------------------------------------------------------------
    def put(self, i: int, person: int) -> None:
        self.state[i] = "assigned"
        self.person[i] = person
        self.sums[person] = self.sums.get(person, 0) + self.d.emb[i]
        self.sizes[person] = self.sizes.get(person, 0) + 1

    # --- one photo -----------------------------------------------------------------------------
    def add_photo(self, photo: int) -> None:
        start = time.perf_counter()
        p, d = self.p, self.d
        faces = d.faces_of[photo]
        neighbours = {i: self.knn(d.emb[i], p.k, p.floor, photo) for i in faces}
        claim = {i: max((n.similarity for n in neighbours[i] if n.person_id), default=-1) for i in faces}
        taken = self.taken(photo)
        decisions: dict[int, Decision] = {}
        for i in sorted(faces, key=lambda i: -claim[i]):
            q = [self.query(i, neighbours[i])]
            decisions[i] = decide(q, self.views(q), self.rules, excluded=taken)
            if decisions[i].state == "assigned":
                taken.add(decisions[i].person_id)
        grown: deque[int] = deque()
        kept: list[int] = []
        for i in faces:
            dec = decisions[i]
            if dec.state == "assigned":
                dup = [n for n in neighbours[i] if n.person_id == dec.person_id
                       and n.similarity >= p.duplicate]
                if dup:
                    self.dup_of[i] = dup[0].face_id
                    continue
            if any(float(d.emb[i] @ d.emb[k]) >= p.duplicate for k in kept):
                self.dup_of[i] = kept[0]
                continue
            self.stored[i] = True
            kept.append(i)
            if dec.state == "assigned":
                self.put(i, dec.person_id)
                grown.append(i)
            else:
                self.state[i] = dec.state
        for i in sorted(faces, key=lambda i: -claim[i]):
            if self.stored[i] and self.state[i] == "pending" and not d.low[i]:
                grown.extend(self.seed(i))
        self.cascade(grown)
        self.match_seconds += time.perf_counter() - start

    def pending_face(self, i: int) -> PendingFace:
        return PendingFace(i, int(self.d.photo[i]), None, self.d.emb[i], bool(self.d.low[i]))

    def seed(self, i: int) -> list[int]:
        if self.state[i] != "pending":
            return []
        p, d = self.p, self.d
        cands = [(n.similarity, self.pending_face(n.face_id))
                 for n in self.knn(d.emb[i], p.seed_k, self.rules.seed_pair_floor, int(d.photo[i]))
                 if n.state == "pending" and not n.low_quality]
        group = seed_group([self.pending_face(i)], cands, self.rules)
        if group is None:
            return []
        target = None
        if p.group_join:
            members = [g.face_id for g in group]
            queries = [self.query(g, [n for n in self.knn(d.emb[g], p.k, p.floor, int(d.photo[g]))
                                      if n.face_id not in members]) for g in members]
            views = self.views(queries)
            excluded = set().union(*(self.taken(int(d.photo[g]), g) for g in members))
            dec = decide(queries, views, self.rules, excluded=excluded)
            if dec.state == "assigned":
                target = dec.person_id
            elif dec.state == "review" or (p.wait_near_person
                                           and not may_found(queries, views, excluded=excluded)):
                return []
        if target is None:
            target = self.next_person
            self.next_person += 1
        for g in group:
            self.put(g.face_id, target)
        return [g.face_id for g in group]

    def cascade(self, grown: deque[int]) -> None:
        p, d = self.p, self.d
        tried: set[int] = set()
        while grown and len(tried) < p.cascade_limit:
            g = grown.popleft()
            for n in self.knn(d.emb[g], p.k, p.join, None):
                if n.state != "pending" or n.face_id in tried or len(tried) >= p.cascade_limit:
                    continue
                tried.add(n.face_id)
                j = n.face_id
                q = [self.query(j, self.knn(d.emb[j], p.k, p.floor, int(d.photo[j])))]
                dec = decide(q, self.views(q), self.rules, excluded=self.taken(int(d.photo[j]), j))
                if dec.state == "assigned":
                    self.put(j, dec.person_id)
                    grown.append(j)

    def person_of(self, i: int) -> int | None:
        while i in self.dup_of:
            i = self.dup_of[i]
        return int(self.person[i]) if self.state[i] == "assigned" else None


def scores(data: Data, photos: np.ndarray, person_of_photo: list[int | None]) -> dict[str, float]:
    """Pairwise precision (all photos), recall over identities with >= 3 photos (and frequent
    >= 10 / occasional 3-9), strangers (1 photo) left out of every person, persons, purity."""
    ids = data.identity[photos]
    counts = data.count[photos]
    by_person: dict[int, list[int]] = {}
    for k, person in enumerate(person_of_photo):
        if person is not None:
            by_person.setdefault(person, []).append(k)
    tp = fp = 0
    tp_by = {"all": 0, "frequent": 0, "occasional": 0}
    for members in by_person.values():
        names, freq = np.unique(ids[members], return_counts=True)
        same = int(sum(f * (f - 1) // 2 for f in freq))
        tp += same
        fp += len(members) * (len(members) - 1) // 2 - same
        for name, f in zip(names, freq):
            c = data.count[data.identity == name][0]
            if c >= 3:
                tp_by["all"] += f * (f - 1) // 2
                tp_by["frequent" if c >= 10 else "occasional"] += f * (f - 1) // 2
    true_by = {"all": 0, "frequent": 0, "occasional": 0}
    names, freq = np.unique(ids, return_counts=True)
    for name, f in zip(names, freq):
        c = data.count[data.identity == name][0]
        if c >= 3:
            true_by["all"] += f * (f - 1) // 2
            true_by["frequent" if c >= 10 else "occasional"] += f * (f - 1) // 2
    strangers = [k for k in range(len(photos)) if counts[k] == 1]
    largest = max(by_person.values(), key=len, default=[])
    purity = (np.unique(ids[largest], return_counts=True)[1].max() / len(largest)) if largest else 1.0
    out = {"precision": tp / (tp + fp) if tp + fp else 1.0, "persons": len(by_person),
           "strangers_out": (sum(person_of_photo[k] is None for k in strangers) / len(strangers)
                             if strangers else 1.0),
           "largest": len(largest), "purity": float(purity)}
    for key in true_by:
        out[f"recall_{key}"] = tp_by[key] / true_by[key] if true_by[key] else 1.0
    return out


def simulate(data: Data, p: SimParams, photos: np.ndarray) -> tuple[dict[str, float], Sim]:
    sim = Sim(data, p)
    for ph in photos:
        sim.add_photo(int(ph))
    person_of_photo = [sim.person_of(int(data.centred[ph])) if data.centred[ph] >= 0 else None
                       for ph in photos]
    out = scores(data, photos, person_of_photo)
    states = [sim.state[i] for i in range(len(data.emb)) if sim.stored[i]]
    out["pending"] = states.count("pending")
    out["review"] = states.count("review")
    out["match_ms"] = 1000 * sim.match_seconds / len(photos)
    return out, sim


def order(n_total: int, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n_total)[:n]


def average_linkage_ceiling(data: Data, photos: np.ndarray, threshold: float) -> dict[str, float]:
    """Offline agglomerative average linkage of the photos' centred faces, cut at `threshold`."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    faces = [int(data.centred[ph]) for ph in photos]
    have = [k for k, f in enumerate(faces) if f >= 0]
    z = linkage(pdist(data.emb[[faces[k] for k in have]], "cosine"), "average")
    labels = fcluster(z, 1 - threshold, "distance")
    sizes = np.bincount(labels)
    person_of_photo: list[int | None] = [None] * len(photos)
    for k, label in zip(have, labels):
        # a "person" needs MIN_FACES_FOR_PERSON faces, as in the matcher
        person_of_photo[k] = int(label) if sizes[label] >= 3 else None
    return scores(data, photos, person_of_photo)


def impostors(data: Data) -> None:
    faces = data.centred[data.centred >= 0]
    ids = data.identity[data.centred >= 0]
    e = data.emb[faces]
    s = e @ e.T
    iu = np.triu_indices(len(e), 1)
    same = (ids[:, None] == ids[None, :])[iu]
    sims = s[iu]
    genuine, impostor = sims[same], sims[~same]
    print(f"centred faces {len(e)}: {len(genuine)} genuine pairs, {len(impostor)} impostor pairs")
    for far in (1e-3, 1e-4, 1e-5, 1e-6):
        t = float(np.quantile(impostor, 1 - far))
        print(f"  FAR {far:g}: similarity {t:.4f}, TAR {np.mean(genuine >= t):.3f}")
    for t in (0.92, 0.93, 0.935, 0.94, 0.945, 0.95):
        print(f"  similarity {t}: FAR {np.mean(impostor >= t):.2e}, TAR {np.mean(genuine >= t):.3f}")


def fmt(r: dict[str, float]) -> str:
    return (f"P {r['precision']:.4f} R {r['recall_all']:.3f} (freq {r['recall_frequent']:.3f}, "
            f"occ {r['recall_occasional']:.3f}) strangers out {r['strangers_out']:.3f} persons "
            f"{r['persons']} largest {r['largest']} purity {r['purity']:.2f}"
            + (f" pending {r['pending']} review {r['review']} {r['match_ms']:.1f} ms/photo"
               if "pending" in r else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", type=Path, default=Path("/work/tmp/lfw/lfw_dlib.npz"))
    parser.add_argument("--photos", type=int, default=None)
    parser.add_argument("--orders", default="1,2,3")
    parser.add_argument("--join", type=float, default=None, help="default: the engine's")
    parser.add_argument("--seed", type=float, default=None, help="default: the engine's")
    parser.add_argument("--support", type=float, default=None)
    parser.add_argument("--slack", type=float, default=None)
    parser.add_argument("--full-size", type=int, default=None)
    parser.add_argument("--seed-floor", type=float, default=None)
    parser.add_argument("--min-faces", type=int, default=None)
    parser.add_argument("--pending-support", action="store_true",
                        help="RuleParams.pending_support (off by default)")
    parser.add_argument("--wait-near-person", action="store_true",
                        help="RuleParams.wait_near_person (off by default)")
    parser.add_argument("--no-group-join", action="store_true")
    parser.add_argument("--impostors", action="store_true")
    parser.add_argument("--ceiling", action="store_true")
    parser.add_argument("--grid", default=None, help="join values, comma-separated")
    args = parser.parse_args(argv)
    data = Data.load_subset(args.npz) if "subset" in args.npz.name else Data.load(args.npz)
    n = args.photos or len(data.centred)
    if args.impostors:
        impostors(data)
    joins = [float(v) for v in args.grid.split(",")] if args.grid else [args.join]
    extra = {} if args.support is None else {"min_support": args.support}
    if args.slack is not None:
        extra["cohesion_slack"] = args.slack
    if args.full_size is not None:
        extra["cohesion_full_size"] = args.full_size
    if args.min_faces is not None:
        extra["min_faces"] = args.min_faces
    extra["pending_support"] = args.pending_support
    extra["wait_near_person"] = args.wait_near_person
    for join, seed_order in itertools.product(joins, [int(s) for s in args.orders.split(",")]):
        photos = order(len(data.centred), n, seed_order)
        m = MatchParams.for_engine("dlib", similarity_threshold=join, seed_threshold=args.seed,
                                   **extra)
        p = SimParams.from_match(m)
        p.group_join = not args.no_group_join
        p.seed_floor = args.seed_floor
        result, _ = simulate(data, p, photos)
        print(f"{n} photos order {seed_order} join {p.join} seed {p.seed} floor {p.seed_floor} support "
              f"{p.min_support} slack {p.cohesion_slack}: {fmt(result)}", flush=True)
        if args.ceiling:
            print(f"  average linkage at {p.join}: "
                  f"{fmt(average_linkage_ceiling(data, photos, p.join))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
