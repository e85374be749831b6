"""`main.py recluster`'s decisions: every automatic assignment decided again, in memory.

The faces of a database arrive again, in one stated order — by default the order they were
stored in (face id; a video track arrives with its first face), so a database matched by the
current rules stays as it is; `order_by="person"` takes persons by id, each person's faces by id,
then the pending pool — through the matcher's own
rules (match_rules.decide, vetoes, seed_group; no copy of them here): a unit (a photo face, or the
faces of one video track) joins a person by average linkage, or waits in the pending pool, where
complete-linkage groups found persons; a founding group that is a known person as a whole joins
it; pending faces near a face that joined are decided again (the catch-up). Neighbours are the
exact nearest faces among those that have arrived (computed once, blocked, as top lists over all
faces, then filtered to the arrived ones).

What is not automatic stays as it is and is there from the start, so persons grow around it:
faces the operator placed (assigned_by 'operator'), a person's manually chosen cover, every face
of a hidden person, and faces in review (the operator's to decide). The operator's "not this
person" facts (face_rejections) keep a face out of that person, and vetoes work as in the matcher.

Persons found by the replay are provisional (negative keys) until `replay` maps each to the old
person holding most of its faces (greedily, largest overlap first; a person anchored by operator
facts is itself), so topics, names and posts follow the bulk of their faces; the rest are new
persons. A face mapped into a person the operator moved it out of goes back to pending.

Measured on all 5,130 faces-lfw photos chained two by two into persons (numbers only, the chain
made as bench/bench_suggestions.py makes it; before: P 0.647 R 0.993): arrival order gives
P 0.9934 R 0.702 (what the matcher itself makes of these photos in that order: P 0.9934
R 0.706), 16 s (18.6 s on PostgreSQL, bench/bench_suggestions.py); person order P 0.9883
R 0.754, 6 s. Precision comes first: arrival is the default.
A database replayed from the matcher's own decisions (tune_persons.Sim, 1,000 photos) changes
1 face of 1,049 in arrival order, 9 in person order.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from match_rules import (Candidate, Decision, FaceQuery, Neighbour, PendingFace, PersonView,
                         RuleParams, decide, seed_group, vetoes)


@dataclass(frozen=True)
class StoredFace:
    """A face as the database holds it (person followed through merges)."""

    face_id: int
    media_item_id: int | None
    track_id: int | None
    low_quality: bool
    embedding: np.ndarray          # unit vector
    person_id: int | None
    state: str                     # assigned / pending / review
    fixed: bool                    # an operator fact (or in review): not decided again
    rejected: frozenset[int] = frozenset()   # persons the operator moved it out of


@dataclass(frozen=True)
class Thresholds:
    """The numbers of identity_matcher.MatchParams the replay needs."""

    join: float
    low_quality: float
    floor: float                   # neighbours below are not fetched (suggest_threshold)
    duplicate: float
    rules: RuleParams
    k: int = 16
    seed_k: int = 32
    cascade_limit: int = 100

    @classmethod
    def from_match(cls, params) -> Thresholds:
        return cls(join=params.similarity_threshold, low_quality=params.low_quality_threshold,
                   floor=params.suggest_threshold, duplicate=params.duplicate_similarity,
                   rules=params.rules(), k=params.k, seed_k=params.seed_k,
                   cascade_limit=params.cascade_limit)


@dataclass(frozen=True)
class Placement:
    """Where a replayed face ends: state, person (an old id, or a negative key for a new
    person), its linkage, who decided ('auto' joined, 'seed' founded) and review candidates."""

    state: str
    person: int | None
    similarity: float | None
    assigned_by: str | None = None
    candidates: tuple[Candidate, ...] = ()


@dataclass
class _Replay:
    faces: list[StoredFace]
    t: Thresholds
    top: np.ndarray = field(init=False)        # per face: the nearest other faces, best first
    top_sim: np.ndarray = field(init=False)
    arrived: np.ndarray = field(init=False)
    person: list[int | None] = field(init=False)
    state: list[str] = field(init=False)
    similarity: list[float | None] = field(init=False)
    by: list[str | None] = field(init=False)
    candidates: dict[int, tuple[Candidate, ...]] = field(default_factory=dict)
    sums: dict[int, np.ndarray] = field(default_factory=dict)
    sizes: Counter = field(default_factory=Counter)
    media_persons: dict[int, Counter] = field(default_factory=dict)
    next_key: int = -1
    unit_of: dict[int, list[int]] = field(default_factory=dict)   # face -> its unit

    def __post_init__(self) -> None:
        n = len(self.faces)
        self.emb = np.stack([f.embedding for f in self.faces]).astype(np.float32) if n else \
            np.zeros((0, 1), np.float32)
        self.top, self.top_sim = _top_lists(self.emb, 4 * max(self.t.k, self.t.seed_k))
        self.arrived = np.zeros(n, bool)
        self.person = [None] * n
        self.state = ["absent"] * n
        self.similarity = [None] * n
        self.by = [None] * n
        self.rejections = {i: set(f.rejected) for i, f in enumerate(self.faces) if f.rejected}

    # --- reading -------------------------------------------------------------------------------

    def neighbours(self, i: int, k: int, floor: float, skip: frozenset[int] = frozenset(),
                   pending_only: bool = False) -> list[Neighbour]:
        out: list[Neighbour] = []
        media = self.faces[i].media_item_id
        for j, s in zip(self.top[i], self.top_sim[i]):
            if s < floor or len(out) >= k:
                break
            j = int(j)
            if j < 0 or not self.arrived[j] or j in skip:
                continue
            if media is not None and self.faces[j].media_item_id == media:
                continue
            if pending_only and (self.state[j] != "pending" or self.faces[j].low_quality):
                continue
            f = self.faces[j]
            out.append(Neighbour(j, self.person[j] if self.state[j] == "assigned" else None,
                                 self.state[j], f.media_item_id, f.track_id, f.low_quality,
                                 float(s)))
        return out

    def views(self, neighbour_lists) -> dict[int, PersonView]:
        keys = {n.person_id for ns in neighbour_lists for n in ns if n.person_id is not None}
        return {p: PersonView(p, self.sizes[p], self.sums[p] / self.sizes[p])
                for p in keys if self.sizes[p]}

    def taken(self, media: int | None, except_faces: Sequence[int]) -> set[int]:
        """Persons with a face in the media item other than `except_faces`."""
        if media is None:
            return set()
        count = Counter(self.media_persons.get(media, Counter()))
        for i in except_faces:
            if self.state[i] == "assigned":
                count[self.person[i]] -= 1
        return {p for p, c in count.items() if c > 0}

    def decide(self, unit: list[int], skip: frozenset[int] = frozenset()) -> Decision:
        t = self.t
        lists = [self.neighbours(i, t.k, t.floor, skip) for i in unit]
        queries = [FaceQuery(self.emb[i], t.low_quality if self.faces[i].low_quality else t.join,
                             ns) for i, ns in zip(unit, lists)]
        excluded: set[int] = set()
        for media in {self.faces[i].media_item_id for i in unit}:
            excluded |= self.taken(media, unit)
        for i in unit:
            excluded |= self.faces[i].rejected
        rejections = {n.face_id: self.rejections[n.face_id] for ns in lists for n in ns
                      if n.face_id in self.rejections}
        return decide(queries, self.views(lists), t.rules, excluded=excluded,
                      vetoed=vetoes(lists, rejections))

    # --- writing -------------------------------------------------------------------------------

    def put(self, i: int, person: int, similarity: float | None, by: str | None) -> None:
        if self.state[i] == "assigned":
            self.take_out(i)
        self.arrived[i] = True
        self.state[i], self.person[i], self.similarity[i], self.by[i] = \
            "assigned", person, similarity, by
        self.sums[person] = self.sums.get(person, 0) + self.emb[i]
        self.sizes[person] += 1
        media = self.faces[i].media_item_id
        if media is not None:
            self.media_persons.setdefault(media, Counter())[person] += 1

    def take_out(self, i: int) -> None:
        person = self.person[i]
        self.sums[person] = self.sums[person] - self.emb[i]
        self.sizes[person] -= 1
        media = self.faces[i].media_item_id
        if media is not None:
            self.media_persons[media][person] -= 1
        self.person[i], self.state[i] = None, "pending"

    def wait(self, i: int, decision: Decision) -> None:
        self.arrived[i] = True
        self.state[i], self.similarity[i] = decision.state, decision.similarity
        if decision.state == "review":
            self.candidates[i] = decision.candidates

    # --- the flow ------------------------------------------------------------------------------

    def arrive(self, unit: list[int]) -> None:
        decision = self.decide(unit)
        grown: deque[int] = deque()
        for i in unit:
            if decision.state == "assigned":
                self.put(i, decision.person_id, decision.similarity, "auto")
                grown.append(i)
            else:
                self.wait(i, decision)
        if decision.state == "pending" and not all(self.faces[i].low_quality for i in unit):
            grown.extend(self.seed(unit))
        self.cascade(grown)

    def seed(self, unit: list[int]) -> list[int]:
        t = self.t
        founders = [self.pending_face(i) for i in unit if not self.faces[i].low_quality]
        own = {self.faces[i].media_item_id for i in unit}
        found: dict[int, tuple[float, PendingFace]] = {}
        for f in founders:
            for n in self.neighbours(f.face_id, t.seed_k, t.rules.seed_threshold,
                                     frozenset(unit), pending_only=True):
                if n.media_item_id in own:
                    continue
                if n.face_id not in found or found[n.face_id][0] < n.similarity:
                    found[n.face_id] = (n.similarity, self.pending_face(n.face_id))
        group = seed_group(founders, list(found.values()), t.rules)
        if group is None:
            return []
        members = {g.face_id for g in group}
        for g in list(members):  # the rest of the founders' video tracks
            members |= set(self.unit_of.get(g, [g]))
        members = sorted(m for m in members if self.state[m] == "pending")
        decision = self.decide(members, frozenset(members))
        if decision.state == "review":
            return []
        if decision.state == "assigned":
            person, by = decision.person_id, "auto"
            sims = [decision.similarity] * len(members)
        else:
            person, by = self.next_key, "seed"
            self.next_key -= 1
            centre = np.sum(self.emb[[g.face_id for g in group]], axis=0)
            centre /= max(float(np.linalg.norm(centre)), 1e-12)
            sims = [round(float(self.emb[m] @ centre), 4) for m in members]
        for m, s in zip(members, sims):
            self.put(m, person, s, by)
        return members

    def cascade(self, grown: deque[int]) -> None:
        t = self.t
        tried: set[tuple] = set()
        while grown and len(tried) < t.cascade_limit:
            g = grown.popleft()
            for n in self.neighbours(g, t.k, t.join, pending_only=False):
                if n.state != "pending" or len(tried) >= t.cascade_limit:
                    continue
                unit = [j for j in self.unit_of.get(n.face_id, [n.face_id])
                        if self.state[j] == "pending"]
                key = tuple(unit)
                if key in tried or not unit:
                    continue
                tried.add(key)
                decision = self.decide(unit)
                if decision.state == "assigned":
                    for j in unit:
                        self.put(j, decision.person_id, decision.similarity, "auto")
                        grown.append(j)

    def pending_face(self, i: int) -> PendingFace:
        f = self.faces[i]
        return PendingFace(i, f.media_item_id if f.media_item_id is not None else -1 - i,
                           f.track_id, self.emb[i], f.low_quality)


ORDERS = {
    # the order the faces were stored in: a database matched by the current rules stays as it is
    "arrival": lambda faces, u: min(faces[i].face_id for i in u),
    # persons by id, each person's faces by id, then the pending pool
    "person": lambda faces, u: (faces[u[0]].person_id is None, faces[u[0]].person_id or 0,
                                min(faces[i].face_id for i in u)),
}


def replay(faces: Sequence[StoredFace], thresholds: Thresholds,
           order_by: str = "arrival") -> dict[int, Placement]:
    """Decide every face that is not `fixed` again, the units in `ORDERS[order_by]`; returns
    {face_id: Placement} for all faces."""
    faces = list(faces)
    r = _Replay(faces, thresholds)
    units: dict[tuple, list[int]] = {}
    for i, f in enumerate(faces):
        key = (f.media_item_id, f.track_id) if f.track_id is not None else ("face", f.face_id)
        units.setdefault(key, []).append(i)
    r.unit_of = {i: u for u in units.values() for i in u}
    for i, f in enumerate(faces):       # operator facts are there from the start
        if f.fixed:
            if f.state == "assigned":
                r.put(i, f.person_id, None, "operator")
            else:
                r.wait(i, Decision(f.state))
    order = sorted((u for u in units.values() if not all(faces[i].fixed for i in u)),
                   key=lambda u: ORDERS[order_by](faces, u))
    for unit in order:
        r.arrive([i for i in unit if not faces[i].fixed])
    mapping = _map_persons(faces, r)
    out: dict[int, Placement] = {}
    for i, f in enumerate(faces):
        if f.fixed:
            out[f.face_id] = Placement(f.state, f.person_id, None, None)
            continue
        if r.state[i] != "assigned":
            out[f.face_id] = Placement(r.state[i], None, r.similarity[i], None,
                                       _mapped(r.candidates.get(i, ()), mapping))
            continue
        person = mapping.get(r.person[i], r.person[i])
        if person in f.rejected:   # a provisional person became one the face was moved out of
            out[f.face_id] = Placement("pending", None, r.similarity[i])
        else:
            out[f.face_id] = Placement("assigned", person, r.similarity[i], r.by[i])
    return out


def _map_persons(faces: list[StoredFace], r: _Replay) -> dict[int, int]:
    """Provisional person -> the old person holding most of its faces, largest overlap first;
    a person anchored by operator facts (or that a provisional person joined) keeps its id."""
    taken = {p for p in r.sizes if p > 0}
    overlap: Counter = Counter()
    for i, f in enumerate(faces):
        if r.state[i] == "assigned" and r.person[i] < 0 and f.person_id is not None:
            overlap[(r.person[i], f.person_id)] += 1
    mapping: dict[int, int] = {}
    for (key, old), _count in sorted(overlap.items(), key=lambda kv: (-kv[1], kv[0][1], -kv[0][0])):
        if key in mapping or old in taken:
            continue
        mapping[key] = old
        taken.add(old)
    return mapping


def _mapped(candidates: tuple[Candidate, ...], mapping: dict[int, int]) -> tuple[Candidate, ...]:
    return tuple(Candidate(mapping.get(c.person_id, c.person_id), c.similarity, c.votes)
                 for c in candidates)


def _top_lists(emb: np.ndarray, k: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """For every face, its `k` most similar other faces (index, similarity), best first."""
    n = len(emb)
    k = min(k, max(n - 1, 0))
    top = np.full((n, k), -1, np.int64)
    sims = np.full((n, k), -2.0, np.float32)
    if k == 0:
        return top, sims
    for start in range(0, n, block):
        s = emb[start:start + block] @ emb.T
        rows = np.arange(s.shape[0])
        s[rows, start + rows] = -2.0             # not itself
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        part_sims = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-part_sims, axis=1, kind="stable")
        top[start:start + block] = np.take_along_axis(part, order, axis=1)
        sims[start:start + block] = np.take_along_axis(part_sims, order, axis=1)
    return top, sims
