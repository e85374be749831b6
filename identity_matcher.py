"""Who is in this photo: each face of a media item goes to a person, waits, or asks the operator.

`IdentityMatcher.assign(conn, media_item_id, faces)` stores the faces of one photo (or the best
faces of each track of one video) and decides their persons, in the caller's transaction, so a
job's faces, persons and due posts commit together with the job. The rules (DESIGN.md §5,
research/face_anchors.md §3, §4, §10):

- **Joining.** The k nearest stored faces come from pgvector's HNSW index (`persons_knn`:
  top-k first, then the similarity filter). Assigned neighbours at or above the join threshold
  vote for their persons, weighted by similarity, the `vote_k` nearest of them per face (all
  faces of a video track vote together). The winner must hold a majority of the votes and its
  best similarity must beat the runner-up's by `margin`; otherwise the face goes to state
  'review' with its candidates in `review_candidates`. A single lucky neighbour of another
  person cannot outvote a person's several faces, and a face between two persons is not guessed.
- **Low-quality faces** (quality below `seed_min_quality`) may join a person, at the stricter
  `low_quality_threshold`, but never found one.
- **Pending pool and seeding.** A face that joins nobody is stored with state 'pending'. A
  person is created when at least `min_faces` pending faces from at least 2 media items agree
  with each other, every pair at `seed_threshold` or better (faces of one video track count as
  one person among themselves). Near-identical faces of different media items (the same photo
  uploaded again) count as one sighting. The new person's posts are due for all its founding
  media items at once.
- **One media item, distinct persons.** Two faces of one photo, or two tracks of one video, never
  share a person. The unit with the strongest claim (highest similarity) decides first; the
  others decide without the persons already taken: the next candidate, or pending.
- **Concurrency.** Creating a person, and any change to pending faces of other media items, happens
  under one `pg_advisory_xact_lock`, taken before writing and followed by a fresh search: two
  workers holding the same stranger's third and fourth faces make one person, not two. Joining
  an existing person takes only that person's row lock (in id order), until the commit.
- **Pending faces catch up.** When a person is born or grows, pending faces near its new faces
  are decided again (the same vote), so the arrival order of photos matters little.
- **Near-duplicates** (similarity >= `duplicate_similarity` to a face of the chosen person, or to
  another face of the same track) are not stored; the media item's post is due all the same.
- **Operator facts** (persons.py) are respected: a face moved out of a person
  (face_rejections) never goes back to it, and a new face that looks more like such a face than
  like any face of that person goes to review; persons merged into another are never matched
  (votes follow merged_into); hidden persons still take faces (so they are not re-created) but
  get no posts.
- **Merge suggestions.** Persons whose faces come within `suggest_threshold` of each other are
  offered to the operator (merge_suggestions, score = best cross similarity), except pairs the
  operator split, pairs seen together in one media item, and pairs already decided.

Thresholds are cosine similarities. `MatchParams.for_engine` derives the secondary ones from
the join threshold d = 1 - similarity_threshold: margin 0.05 d, low-quality join +0.25 d,
suggestions -0.25 d, duplicates 1 - 0.05 d (at least 0.98). For ArcFace at 0.55 that is a
margin of 0.0225 (the research's 0.02), low-quality join 0.66, suggestions from 0.44,
duplicates 0.98; for dlib at 0.92 (a compressed scale): 0.004, 0.94, 0.90 and 0.996.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
from psycopg.types.json import Jsonb

from database import queries

if TYPE_CHECKING:
    import psycopg

    from config import Settings
    from media_processor import DetectedFace

logger = logging.getLogger(__name__)

# pg_advisory_xact_lock key ("FAPERSON"): person creation and pending-pool changes.
PERSONS_LOCK = 0x46_41_50_45_52_53_4F_4E

# hnsw.ef_search: the most recall within issue 4's 15 ms p95 at 200k faces, chosen with
# bench/bench_match.py (its docstring has the figures and why recall@10 stays below 0.95).
DEFAULT_EF_SEARCH = 100


@dataclass(frozen=True)
class MatchParams:
    """Everything the matcher decides with. Build it with `for_engine` or `from_settings`."""

    similarity_threshold: float        # join a person (cosine similarity)
    seed_threshold: float              # every pair of founding faces of a new person
    min_faces: int = 3                 # MIN_FACES_FOR_PERSON: founding faces (from >= 2 media)
    seed_min_quality: float = 0.7      # below: a low-quality face (joins stricter, never seeds)
    margin: float = 0.0225             # best person's similarity over the runner-up's
    low_quality_threshold: float = 0.6625
    duplicate_similarity: float = 0.98
    suggest_threshold: float = 0.4375  # merge suggestions from here
    k: int = 16                        # neighbours fetched per face
    vote_k: int = 5                    # of which the nearest assigned ones above threshold vote
    seed_k: int = 32                   # neighbours searched for founding faces
    ef_search: int = DEFAULT_EF_SEARCH
    cascade_limit: int = 100           # pending units re-decided per call, at most

    def __post_init__(self) -> None:
        if not (0.0 < self.similarity_threshold < 1.0 and 0.0 < self.seed_threshold < 1.0):
            raise ValueError("similarity thresholds are cosine similarities between 0 and 1")
        if self.min_faces < 2:
            raise ValueError("a person needs at least 2 founding faces (MIN_FACES_FOR_PERSON)")
        if self.ef_search < max(self.k, self.seed_k):
            # HNSW returns at most ef_search rows: a smaller value would silently cut the top-k
            raise ValueError("ef_search must be at least k and seed_k")

    @classmethod
    def for_engine(cls, engine: str, *, similarity_threshold: float | None = None,
                   seed_threshold: float | None = None, **overrides: object) -> MatchParams:
        """The engine's default thresholds (media_processor.ENGINES), the secondary ones derived
        from the join threshold as the module docstring says; keyword arguments override."""
        from media_processor import ENGINES  # cheap: no model is loaded

        info = ENGINES[engine]
        join = similarity_threshold or info.default_similarity_threshold
        seed = max(seed_threshold or info.default_seed_threshold, join)
        d = 1.0 - join
        base = cls(similarity_threshold=join, seed_threshold=seed,
                   margin=round(0.05 * d, 4),
                   low_quality_threshold=round(join + 0.25 * d, 4),
                   duplicate_similarity=round(max(0.98, 1.0 - 0.05 * d), 4),
                   suggest_threshold=round(join - 0.25 * d, 4))
        return replace(base, **overrides)  # type: ignore[arg-type]

    @classmethod
    def from_settings(cls, settings: Settings) -> MatchParams:
        """SIMILARITY_THRESHOLD, SEED_SIMILARITY_THRESHOLD (None: the engine's), MIN_FACES_FOR_PERSON."""
        return cls.for_engine(settings.face_engine,
                              similarity_threshold=settings.similarity_threshold,
                              seed_threshold=settings.seed_similarity_threshold,
                              min_faces=settings.min_faces_for_person)


@dataclass(frozen=True)
class Neighbour:
    """A stored face near the one being matched."""

    face_id: int
    person_id: int | None       # None unless state is 'assigned'; follows merged_into
    state: str
    media_item_id: int | None
    track_id: int | None
    low_quality: bool
    similarity: float


@dataclass(frozen=True)
class Candidate:
    person_id: int
    similarity: float           # the best similarity of one of its faces
    votes: float                # similarity-weighted votes


@dataclass(frozen=True)
class Decision:
    state: Literal["assigned", "pending", "review"]
    person_id: int | None = None
    similarity: float | None = None
    candidates: tuple[Candidate, ...] = ()


def decide(neighbour_lists: Sequence[tuple[float, Sequence[Neighbour]]], params: MatchParams, *,
           excluded: frozenset[int] | set[int] = frozenset(),
           vetoed: frozenset[int] | set[int] = frozenset()) -> Decision:
    """The vote for one unit (a photo face, or the faces of one video track).

    `neighbour_lists`: (threshold, neighbours best first) per face. `excluded`: persons this
    unit may not join (taken by another face of the media item, or rejected by the operator for
    these faces). `vetoed`: persons that a rejected look-alike speaks against; winning one of
    them sends the unit to review.
    """
    votes: dict[int, float] = {}
    best: dict[int, float] = {}
    for threshold, neighbours in neighbour_lists:
        voters = [n for n in neighbours
                  if n.person_id is not None and n.similarity >= threshold][:params.vote_k]
        for n in voters:
            votes[n.person_id] = votes.get(n.person_id, 0.0) + n.similarity
            best[n.person_id] = max(best.get(n.person_id, -1.0), n.similarity)
    allowed = sorted((p for p in votes if p not in excluded),
                     key=lambda p: (votes[p], best[p]), reverse=True)
    if not allowed:
        return Decision("pending", similarity=_best_assigned(neighbour_lists))
    candidates = tuple(Candidate(p, round(best[p], 4), round(votes[p], 4)) for p in allowed)
    winner = allowed[0]
    total = sum(votes[p] for p in allowed)
    runner_up = max((best[p] for p in allowed[1:]), default=None)
    clear = (votes[winner] > total / 2
             and (runner_up is None or best[winner] - runner_up >= params.margin)
             and winner not in vetoed)
    if not clear:
        return Decision("review", similarity=best[winner], candidates=candidates)
    return Decision("assigned", winner, best[winner], candidates)


def _best_assigned(neighbour_lists) -> float | None:
    sims = [n.similarity for _, ns in neighbour_lists for n in ns if n.person_id is not None]
    return max(sims, default=None)


def vetoes(neighbour_lists: Sequence[Sequence[Neighbour]],
           rejections: dict[int, set[int]]) -> set[int]:
    """Persons P such that some neighbour the operator moved out of P is at least as similar to
    this face as P's most similar face: the face looks more like a known "not P" than like P."""
    found: set[int] = set()
    for neighbours in neighbour_lists:
        for n in neighbours:
            for person in rejections.get(n.face_id, ()):
                closest = max((m.similarity for m in neighbours if m.person_id == person),
                              default=None)
                if closest is not None and n.similarity >= closest:
                    found.add(person)
    return found


@dataclass(frozen=True)
class FaceOutcome:
    """What became of one input face."""

    index: int                  # position in the faces given to `assign`
    face_id: int | None         # the stored row; None for a duplicate (not stored)
    state: Literal["assigned", "pending", "review", "duplicate"]
    person_id: int | None       # assigned: its person; duplicate: the person it duplicates
    similarity: float | None    # best similarity to that person (or to any person, if none)
    new_person: bool = False    # the person was created by this call


@dataclass
class MatchResult:
    faces: list[FaceOutcome]
    due: list[tuple[int, int]]  # (person_id, media_item_id): uploaded_media rows now pending
    created_persons: list[int]


@dataclass
class _Unit:
    """One person within the media item: a photo face, or the faces of one video track."""

    indices: list[int]
    embeddings: list[np.ndarray]
    low_quality: list[bool]
    track_id: int | None = None
    neighbours: list[list[Neighbour]] = field(default_factory=list)
    vetoed: set[int] = field(default_factory=set)
    decision: Decision = Decision("pending")
    face_ids: list[int | None] = field(default_factory=list)

    @property
    def seedable(self) -> bool:
        return not all(self.low_quality)

    @property
    def claim(self) -> float:
        return max((n.similarity for ns in self.neighbours for n in ns
                    if n.person_id is not None), default=-1.0)


@dataclass
class _Member:
    face_id: int
    media_item_id: int
    track_id: int | None
    embedding: np.ndarray
    low_quality: bool = False

    def same_track(self, other: _Member) -> bool:
        return (self.media_item_id == other.media_item_id and self.track_id is not None
                and self.track_id == other.track_id)


@dataclass
class _Run:
    """The state of one `assign` call."""

    conn: psycopg.AsyncConnection
    media_item_id: int
    locked: bool = False
    due: list[tuple[int, int]] = field(default_factory=list)
    touched: set[int] = field(default_factory=set)
    created: list[int] = field(default_factory=list)
    pairs: dict[tuple[int, int], float] = field(default_factory=dict)
    grown: deque = field(default_factory=deque)   # (face_id, person_id, embedding) to cascade from


class IdentityMatcher:
    """Decides persons for faces; see the module docstring. Stateless apart from its params,
    so one instance serves every worker."""

    def __init__(self, params: MatchParams):
        self.params = params

    @classmethod
    def from_settings(cls, settings: Settings) -> IdentityMatcher:
        return cls(MatchParams.from_settings(settings))

    async def assign(self, conn: psycopg.AsyncConnection, media_item_id: int,
                     faces: Sequence[DetectedFace], *, job_id: int | None = None) -> MatchResult:
        """Store the faces of media item `media_item_id` and decide their persons.

        Runs in the caller's transaction (a savepoint inside it, or its own if there is none);
        `conn` must have the vector type registered (database.async_pool does). Faces with the
        same `track_id` are one person (a video track). Raises ValueError for an unknown media
        item.
        """
        if not faces:
            return MatchResult([], [], [])
        p = self.params
        run = _Run(conn, media_item_id)
        async with conn.transaction():
            media = await (await conn.execute(queries.persons_media_item,
                                              {"media_item_id": media_item_id})).fetchone()
            if media is None:
                raise ValueError(f"media item {media_item_id} does not exist; "
                                 "insert it into media_items before matching its faces")
            await conn.execute(queries.persons_set_ef_search, {"ef_search": str(p.ef_search)})
            units = _units(faces, p)
            await self._decide_new(run, units)
            if self._needs_lock(run, units):
                await conn.execute(queries.persons_lock, {"key": PERSONS_LOCK})
                run.locked = True
                await self._decide_new(run, units)  # search again: another worker may have just
                # created the person these faces belong to
            await self._claim(run, units)
            await self._store(run, units, faces, media, job_id)
            if run.locked:
                for unit in sorted(units, key=lambda u: -u.claim):
                    if unit.decision.state == "pending" and unit.seedable:
                        await self._seed(run, unit)
                await self._cascade(run)
            await self._record_suggestions(run)
            await self._refresh(run)
            outcomes = await self._outcomes(run, units)
        return MatchResult(outcomes, run.due, run.created)

    async def refresh_merge_suggestions(self, conn: psycopg.AsyncConnection, *,
                                        faces_per_person: int = 5) -> int:
        """A full pass over every visible person's best faces (e.g. nightly, or after the
        thresholds changed); returns how many suggestions were made or raised. `assign` already
        offers what each new face reveals."""
        run = _Run(conn, media_item_id=0)
        async with conn.transaction():
            await conn.execute(queries.persons_set_ef_search,
                               {"ef_search": str(self.params.ef_search)})
            rows = await (await conn.execute(queries.persons_best_faces,
                                             {"per_person": faces_per_person})).fetchall()
            for person_id, _face_id, embedding in rows:
                for n in await self._knn(conn, embedding.to_numpy(), self.params.suggest_threshold):
                    _note_pair(run, person_id, n)
            return await self._record_suggestions(run)

    # --- deciding ------------------------------------------------------------------------------

    async def _knn(self, conn, embedding: np.ndarray, min_similarity: float) -> list[Neighbour]:
        rows = await (await conn.execute(queries.persons_knn, {
            "embedding": embedding, "k": self.params.k, "min_similarity": min_similarity,
        })).fetchall()
        return [Neighbour(r[0], r[6] if r[1] == "assigned" else None, r[1], r[2], r[3], r[4],
                          float(r[5])) for r in rows]

    def _thresholds(self, low_quality: Sequence[bool]) -> list[float]:
        p = self.params
        return [p.low_quality_threshold if lq else p.similarity_threshold for lq in low_quality]

    async def _decide_new(self, run: _Run, units: list[_Unit]) -> None:
        """Search and vote for the new faces; units with the strongest claim choose first."""
        conn, p = run.conn, self.params
        taken = {r[0] for r in await (await conn.execute(queries.persons_media_persons, {
            "media_item_id": run.media_item_id, "except_ids": []})).fetchall()}
        for unit in units:
            unit.neighbours = [[n for n in await self._knn(conn, e, p.suggest_threshold)
                                if n.media_item_id != run.media_item_id]
                               for e in unit.embeddings]
        rejections = await self._rejections(
            conn, [n.face_id for u in units for ns in u.neighbours for n in ns])
        for unit in sorted(units, key=lambda u: -u.claim):
            unit.vetoed = vetoes(unit.neighbours, rejections)
            unit.decision = decide(list(zip(self._thresholds(unit.low_quality), unit.neighbours)),
                                   p, excluded=taken, vetoed=unit.vetoed)
            if unit.decision.state == "assigned":
                taken.add(unit.decision.person_id)

    async def _rejections(self, conn, face_ids: list[int]) -> dict[int, set[int]]:
        found: dict[int, set[int]] = {}
        if face_ids:
            for face_id, person_id in await (await conn.execute(
                    queries.persons_rejections, {"face_ids": face_ids})).fetchall():
                found.setdefault(face_id, set()).add(person_id)
        return found

    def _needs_lock(self, run: _Run, units: list[_Unit]) -> bool:
        """Whether this call may create a person or change other media items' pending faces."""
        p = self.params
        for unit in units:
            state = unit.decision.state
            for lq, neighbours in zip(unit.low_quality, unit.neighbours):
                for n in neighbours:
                    if n.state != "pending":
                        continue
                    if state == "assigned" and n.similarity >= p.similarity_threshold:
                        return True
                    if (state == "pending" and not lq and not n.low_quality
                            and n.similarity >= p.seed_threshold):
                        return True
        return False

    # --- storing -------------------------------------------------------------------------------

    async def _claim(self, run: _Run, units: list[_Unit]) -> None:
        """Lock the chosen persons (in id order) against a concurrent merge, hide or dissolve."""
        for person_id in sorted({u.decision.person_id for u in units
                                 if u.decision.state == "assigned"}):
            now = await self._claim_person(run.conn, person_id)
            taken = {u.decision.person_id for u in units if u.decision.state == "assigned"}
            for unit in units:
                if unit.decision.state == "assigned" and unit.decision.person_id == person_id:
                    unit.decision = (
                        replace(unit.decision, person_id=now)
                        if now == person_id or (now is not None and now not in taken)
                        else Decision("pending", similarity=unit.decision.similarity))

    async def _claim_person(self, conn, person_id: int) -> int | None:
        """The person faces for `person_id` go to now (a merge survivor, or None if it was
        dissolved), locked (FOR NO KEY UPDATE) until the transaction ends."""
        for _ in range(5):
            row = await (await conn.execute(queries.persons_claim,
                                            {"person_id": person_id})).fetchone()
            if row is None or row[0] == person_id:
                return row and row[0]
            person_id = row[0]
        raise RuntimeError(f"person {person_id}: merged_into chain too long")

    async def _store(self, run: _Run, units: list[_Unit], faces: Sequence[DetectedFace],
                     media: tuple, job_id: int | None) -> None:
        p = self.params
        for unit in units:
            d = unit.decision
            kept: list[np.ndarray] = []
            for index, embedding, lq, neighbours in zip(unit.indices, unit.embeddings,
                                                        unit.low_quality, unit.neighbours):
                to_person = max((n.similarity for n in neighbours
                                 if d.state == "assigned" and n.person_id == d.person_id),
                                default=None)
                if ((to_person is not None and to_person >= p.duplicate_similarity)
                        or any(float(embedding @ k) >= p.duplicate_similarity for k in kept)):
                    unit.face_ids.append(None)
                    continue
                face = faces[index]
                row = await (await run.conn.execute(queries.persons_insert_face, {
                    "person_id": d.person_id if d.state == "assigned" else None,
                    "embedding": embedding, "source_chat_id": media[1],
                    "source_message_id": media[2],
                    "quality": min(1.0, max(0.0, float(face.quality))),
                    "media_item_id": run.media_item_id, "job_id": job_id,
                    "bbox": [float(v) for v in face.bbox],
                    "landmarks": [float(v) for v in np.asarray(face.landmarks).ravel()],
                    "det_score": float(face.det_score), "crop_jpeg": face.crop_jpeg,
                    "frame_time": face.frame_time, "track_id": face.track_id,
                    "low_quality": lq, "state": d.state,
                    "assigned_by": "auto" if d.state == "assigned" else None,
                    "similarity": to_person if to_person is not None else d.similarity,
                    "review_candidates": (Jsonb([asdict(c) for c in d.candidates])
                                          if d.state == "review" else None),
                })).fetchone()
                unit.face_ids.append(row[0])
                kept.append(embedding)
                if d.state == "assigned":
                    run.grown.append((row[0], d.person_id, embedding))
            if d.state == "assigned":
                await self._due(run, d.person_id, [run.media_item_id])
                for neighbours in unit.neighbours:
                    for n in neighbours:
                        _note_pair(run, d.person_id, n)

    async def _due(self, run: _Run, person_id: int, media_item_ids: list[int]) -> None:
        rows = await (await run.conn.execute(queries.persons_insert_due, {
            "person_id": person_id, "media_item_ids": sorted(set(media_item_ids))})).fetchall()
        run.due.extend((r[0], r[1]) for r in rows)
        run.touched.add(person_id)

    async def _assign(self, run: _Run, person_id: int, members: list[_Member],
                      similarities: list[float], assigned_by: str) -> None:
        person_id = await self._claim_person(run.conn, person_id)
        if person_id is None:
            return
        rows = await (await run.conn.execute(queries.persons_assign, {
            "person_id": person_id, "assigned_by": assigned_by, "from_state": "pending",
            "face_ids": [m.face_id for m in members],
            "similarities": [round(float(s), 4) for s in similarities],
        })).fetchall()
        if len(rows) != len(members):  # the lock makes this impossible; fail loudly if not
            raise RuntimeError(f"{len(members) - len(rows)} pending faces changed under the "
                               f"persons lock while joining person {person_id}")
        await self._due(run, person_id, [m.media_item_id for m in members])
        run.grown.extend((m.face_id, person_id, m.embedding) for m in members)

    # --- creating persons ----------------------------------------------------------------------

    async def _seed(self, run: _Run, unit: _Unit) -> None:
        """Found a person from this pending unit and agreeing pending faces, if enough agree."""
        conn, p = run.conn, self.params
        stored = [fid for fid in unit.face_ids if fid is not None]
        own = await self._pending_units(conn, stored)
        if {m.face_id for m in own} != set(stored):
            return  # a cascade already placed this unit
        lq = dict(zip(unit.face_ids, unit.low_quality))
        group = [m for m in own if not lq.get(m.face_id, True)]
        candidates: dict[int, tuple[float, _Member]] = {}
        for anchor in group:
            for fid, media_id, track_id, emb, sim in await (await conn.execute(
                    queries.persons_seed_candidates, {
                        "embedding": anchor.embedding, "k": p.seed_k,
                        "min_similarity": p.seed_threshold})).fetchall():
                if media_id == run.media_item_id or fid in lq:
                    continue
                if fid not in candidates or candidates[fid][0] < sim:
                    candidates[fid] = (sim, _Member(fid, media_id, track_id, emb.to_numpy()))
        for _, c in sorted(candidates.values(), key=lambda item: -item[0]):
            if any(g.media_item_id == c.media_item_id and not g.same_track(c) for g in group):
                continue  # one person per photo / per track of a video
            if all(float(c.embedding @ g.embedding) >= p.seed_threshold
                   for g in group if not g.same_track(c)):
                group.append(c)
        media = {g.media_item_id for g in group}
        if _sightings(group, p.duplicate_similarity) < p.min_faces or len(media) < 2:
            return
        person_id = (await (await conn.execute(queries.persons_create)).fetchone())[0]
        members = {m.face_id: m for m in group}
        for mate in await self._pending_units(conn, list(members)):
            members.setdefault(mate.face_id, mate)  # the rest of the founders' video tracks
        centre = _unit_vector(np.sum([g.embedding for g in group], axis=0))
        ordered = list(members.values())
        await self._assign(run, person_id, ordered,
                           [float(m.embedding @ centre) for m in ordered], "seed")
        run.created.append(person_id)
        logger.info("created person %d from %d faces in %d media items", person_id,
                    len(ordered), len({m.media_item_id for m in ordered}))

    async def _pending_units(self, conn, face_ids: list[int]) -> list[_Member]:
        if not face_ids:
            return []
        rows = await (await conn.execute(queries.persons_pending_units,
                                         {"face_ids": face_ids})).fetchall()
        return [_Member(r[0], r[1], r[2], r[3].to_numpy(), r[4]) for r in rows]

    async def _cascade(self, run: _Run) -> None:
        """Pending faces near faces that just joined (or founded) a person are decided again."""
        conn, p = run.conn, self.params
        tried: set[tuple] = set()
        while run.grown and len(tried) < p.cascade_limit:
            _face_id, person_id, embedding = run.grown.popleft()
            for n in await self._knn(conn, embedding, p.suggest_threshold):
                _note_pair(run, person_id, n)
                key = (n.media_item_id, n.track_id) if n.track_id is not None else (n.face_id,)
                if (n.state != "pending" or key in tried or n.similarity < p.similarity_threshold
                        or len(tried) >= p.cascade_limit):
                    continue
                tried.add(key)
                unit = await self._pending_units(conn, [n.face_id])
                if unit:
                    await self._redecide(run, unit)

    async def _redecide(self, run: _Run, unit: list[_Member]) -> None:
        """The vote for a stored pending unit (of another media item); joins if clear."""
        conn = run.conn
        media_item_id = unit[0].media_item_id
        ids = [m.face_id for m in unit]
        neighbour_lists = [[n for n in await self._knn(conn, m.embedding, self.params.suggest_threshold)
                            if n.media_item_id != media_item_id] for m in unit]
        taken = {r[0] for r in await (await conn.execute(queries.persons_media_persons, {
            "media_item_id": media_item_id, "except_ids": ids})).fetchall()}
        own = await self._rejections(conn, ids)
        excluded = taken.union(*own.values()) if own else taken
        rejections = await self._rejections(conn, [n.face_id for ns in neighbour_lists for n in ns])
        decision = decide(list(zip(self._thresholds([m.low_quality for m in unit]), neighbour_lists)),
                          self.params, excluded=excluded, vetoed=vetoes(neighbour_lists, rejections))
        if decision.state != "assigned":
            return
        sims = [max((n.similarity for n in ns if n.person_id == decision.person_id),
                    default=decision.similarity) for ns in neighbour_lists]
        await self._assign(run, decision.person_id, unit, sims, "auto")

    # --- bookkeeping ---------------------------------------------------------------------------

    async def _record_suggestions(self, run: _Run) -> int:
        made = 0
        for (a, b), score in sorted(run.pairs.items()):
            made += len(await (await run.conn.execute(queries.persons_suggest_merge, {
                "person_a": a, "person_b": b, "score": round(score, 4)})).fetchall())
        return made

    async def _refresh(self, run: _Run) -> None:
        for person_id in sorted(run.touched):  # one order everywhere: no deadlocks between workers
            await run.conn.execute(queries.persons_refresh, {"person_id": person_id})
        if run.touched:
            await run.conn.execute(queries.persons_seen, {"person_ids": sorted(run.touched)})

    async def _outcomes(self, run: _Run, units: list[_Unit]) -> list[FaceOutcome]:
        stored = [fid for u in units for fid in u.face_ids if fid is not None]
        now = {r[0]: r for r in await (await run.conn.execute(
            queries.persons_face_states, {"face_ids": stored})).fetchall()}
        created = set(run.created)
        outcomes = []
        for unit in units:
            persons = {now[f][2] for f in unit.face_ids if f is not None and now[f][2] is not None}
            unit_person = next(iter(persons), unit.decision.person_id)
            for index, face_id in zip(unit.indices, unit.face_ids):
                if face_id is None:
                    outcomes.append(FaceOutcome(index, None, "duplicate", unit_person,
                                                unit.decision.similarity, unit_person in created))
                    continue
                _, state, person_id, similarity = now[face_id]
                outcomes.append(FaceOutcome(index, face_id, state, person_id,
                                            None if similarity is None else float(similarity),
                                            person_id in created))
        return sorted(outcomes, key=lambda o: o.index)


def _units(faces: Sequence[DetectedFace], params: MatchParams) -> list[_Unit]:
    """One unit per photo face, one per video track (faces sharing a track_id)."""
    units: list[_Unit] = []
    by_track: dict[int, _Unit] = {}
    for index, face in enumerate(faces):
        embedding = _unit_vector(np.asarray(face.embedding, dtype=np.float32))
        low = float(face.quality) < params.seed_min_quality
        if face.track_id is not None and face.track_id in by_track:
            unit = by_track[face.track_id]
            unit.indices.append(index)
            unit.embeddings.append(embedding)
            unit.low_quality.append(low)
            continue
        unit = _Unit([index], [embedding], [low], track_id=face.track_id)
        units.append(unit)
        if face.track_id is not None:
            by_track[face.track_id] = unit
    return units


def _note_pair(run: _Run, person_id: int, n: Neighbour) -> None:
    if n.person_id is None or n.person_id == person_id:
        return
    key = (min(person_id, n.person_id), max(person_id, n.person_id))
    run.pairs[key] = max(run.pairs.get(key, -1.0), n.similarity)


def _sightings(group: list[_Member], duplicate_similarity: float) -> int:
    """Faces in the group, counting near-identical faces of different media items once."""
    counted: list[_Member] = []
    for m in group:
        if not any(c.media_item_id != m.media_item_id
                   and float(c.embedding @ m.embedding) >= duplicate_similarity for c in counted):
            counted.append(m)
    return len(counted)


def _unit_vector(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)
