"""Who is in this photo: each face of a media item goes to a person, waits, or asks the operator.

`IdentityMatcher.assign(conn, media_item_id, faces)` stores the faces of one photo (or the best
faces of each track of one video) and decides their persons, in the caller's transaction, so a
job's faces, persons and due posts commit together with the job. The modules (DESIGN.md §5):

- match_rules.py: the decisions, pure functions over plain data (unit-tested on numbers);
- match_search.py: what is read (neighbours, persons as a whole, the operator's facts);
- match_writes.py: what is written, and the bookkeeping of one call;
- this module: the order of things, the persons lock, seeding and the catch-up of pending faces.

The rules:

- **Joining, against the person as a whole.** The k nearest stored faces (HNSW) name the
  candidate persons. A unit (a photo face, or the faces of one video track) joins the person
  with the best *average linkage* (mean similarity to all of the person's faces) if it reaches
  the join threshold, if at least `min_support` of the unit's neighbours at that threshold are
  the person's faces (pending faces of nobody yet, and other persons', count against), and if
  it beats the runner-up by `margin`; a close runner-up, or a veto (below), means review. No
  person grows one nearest neighbour at a time (single linkage chained 435 news people into a
  few dozen persons): a face near the edge of a person, far from its other faces, stays out.
- **Low-quality faces** (quality below `seed_min_quality`) may join at the stricter
  `low_quality_threshold`, but never found a person.
- **Pending pool and seeding (complete linkage).** A face that joins nobody waits with state
  'pending'. A person is founded when at least `min_faces` pending faces from at least 2 media
  items agree pairwise at `seed_threshold` or better (near-identical faces of different media
  items count once; faces of one video track are one person among themselves). Before founding,
  the group as a whole is decided against the existing persons by the joining rule: a group that
  is a known person joins it (one person, not two); a group in doubt waits. The founders' media
  items are all posted at once. With `wait_near_person` (off by default, see RuleParams), a
  group that joins no person founds one only if no person it may join is at the join
  threshold of it as a whole (`may_found`): it waits rather than make a person twice.
- **One media item, distinct persons.** Two faces of one photo, or two tracks of one video, never
  share a person. The unit with the strongest claim decides first; the others decide without
  the persons already taken.
- **Concurrency.** Creating a person, and any change to pending faces of other media items,
  happens under one `pg_advisory_xact_lock`, taken before writing and followed by a fresh search.
  Joining an existing person takes only that person's row lock (in id order), until the commit.
- **Pending faces catch up** by the same rule: when a person is born or grows, pending faces near
  its new faces are decided again against the person as a whole.
- **Near-duplicates** (similarity >= `duplicate_similarity` to a face of the chosen person, or to
  another face of the same track) are not stored; the media item's post is due all the same.
- **Operator facts** (persons.py): a face moved out of a person never goes back to it, and a face
  that looks more like such a face than like any face of that person goes to review; merged
  persons are never matched (candidates follow merged_into); hidden persons still take faces.
- **Merge suggestions.** Persons whose faces come within `suggest_threshold` of each other are
  offered to the operator, except pairs the operator split, pairs seen together in one media
  item, and pairs already decided.

Thresholds are cosine similarities (engine defaults and their calibration: media_processor.ENGINES).
`MatchParams.for_engine` derives the secondary ones from the join threshold d = 1 - similarity:
margin 0.1 d, cohesion slack 0.36 d, low-quality join +0.25 d, suggestions -0.25 d, duplicates
1 - 0.05 d (>= 0.98). For dlib at 0.93 that is a margin of 0.007, slack 0.025, low-quality join
0.9475, suggestions from 0.9125, duplicates 0.9965; for ArcFace at 0.55: 0.045, 0.162, 0.6625,
0.4375 and 0.98.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
from psycopg.types.json import Jsonb

import match_search as search
from database import HNSW_EF_SEARCH, queries
from match_rules import (Candidate, Decision, FaceQuery, Neighbour, PendingFace, RuleParams,
                         decide, may_found, seed_group, unit_vector, vetoes)
from match_writes import Run

if TYPE_CHECKING:
    import psycopg

    from config import Settings
    from media_processor import DetectedFace

__all__ = ["Candidate", "DEFAULT_EF_SEARCH", "Decision", "FaceOutcome", "IdentityMatcher",
           "MatchParams", "MatchResult", "Neighbour", "PERSONS_LOCK", "decide", "vetoes"]

logger = logging.getLogger(__name__)

# pg_advisory_xact_lock key ("FAPERSON"): person creation and pending-pool changes.
PERSONS_LOCK = 0x46_41_50_45_52_53_4F_4E

# hnsw.ef_search: recall >= 0.995 of the neighbours above the floor, chosen with
# bench/bench_scale.py (database.HNSW_EF_SEARCH says the figures; docs/SCALING.md).
DEFAULT_EF_SEARCH = HNSW_EF_SEARCH


@dataclass(frozen=True)
class MatchParams:
    """Everything the matcher decides with. Build it with `for_engine` or `from_settings`."""

    similarity_threshold: float        # join a person: average linkage (cosine similarity)
    seed_threshold: float              # every pair of founding faces of a new person
    min_faces: int = 3                 # MIN_FACES_FOR_PERSON: founding faces (from >= 2 media)
    seed_min_quality: float = 0.7      # below: a low-quality face (joins stricter, never seeds)
    margin: float = 0.0225             # best person's linkage over the runner-up's
    min_support: float = 0.67          # share of the near neighbours that are the person's
    cohesion_slack: float = 0.025      # linkage at most this far below the person's cohesion,
    cohesion_full_size: int = 5        # from this many faces on (less for smaller persons)
    low_quality_threshold: float = 0.6625
    duplicate_similarity: float = 0.98
    suggest_threshold: float = 0.4375  # merge suggestions from here
    k: int = 16                        # neighbours fetched per face
    seed_k: int = 32                   # neighbours searched for founding faces
    ef_search: int = DEFAULT_EF_SEARCH
    cascade_limit: int = 100           # pending units re-decided per call, at most
    pending_support: bool = False      # match_rules.RuleParams: measured, off (costs precision)
    wait_near_person: bool = False

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
                   margin=round(0.1 * d, 4),
                   cohesion_slack=round(0.36 * d, 4),
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

    def rules(self) -> RuleParams:
        return RuleParams(margin=self.margin, seed_threshold=self.seed_threshold,
                          min_faces=self.min_faces, duplicate_similarity=self.duplicate_similarity,
                          min_support=self.min_support, cohesion_slack=self.cohesion_slack,
                          cohesion_full_size=self.cohesion_full_size,
                          pending_support=self.pending_support,
                          wait_near_person=self.wait_near_person)

    def threshold(self, low_quality: bool) -> float:
        return self.low_quality_threshold if low_quality else self.similarity_threshold


@dataclass(frozen=True)
class FaceOutcome:
    """What became of one input face."""

    index: int                  # position in the faces given to `assign`
    face_id: int | None         # the stored row; None for a duplicate (not stored)
    state: Literal["assigned", "pending", "review", "duplicate"]
    person_id: int | None       # assigned: its person; duplicate: the person it duplicates
    similarity: float | None    # linkage to that person (or the best to any person, if none)
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
    decision: Decision = Decision("pending")
    face_ids: list[int | None] = field(default_factory=list)

    @property
    def seedable(self) -> bool:
        return not all(self.low_quality)

    @property
    def claim(self) -> float:
        return max((n.similarity for ns in self.neighbours for n in ns
                    if n.person_id is not None), default=-1.0)


class IdentityMatcher:
    """Decides persons for faces; see the module docstring. Stateless apart from its params,
    so one instance serves every worker."""

    def __init__(self, params: MatchParams):
        self.params = params
        self.rules = params.rules()

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
        run = Run(conn, media_item_id)
        async with conn.transaction():
            media = await (await conn.execute(queries.persons_media_item,
                                              {"media_item_id": media_item_id})).fetchone()
            if media is None:
                raise ValueError(f"media item {media_item_id} does not exist; "
                                 "insert it into media_items before matching its faces")
            await conn.execute(queries.persons_set_ef_search,
                               {"ef_search": str(self.params.ef_search)})
            units = _units(faces, self.params)
            await self._decide_new(run, units)
            if self._needs_lock(units):
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
            await run.record_suggestions()
            await run.refresh()
            outcomes = await self._outcomes(run, units)
        return MatchResult(outcomes, run.due, run.created)

    async def refresh_merge_suggestions(self, conn: psycopg.AsyncConnection) -> int:
        """The full pass over every visible person, ranked by agreeing faces (suggestions.py;
        the daemon runs it on a schedule); returns how many suggestions were made or re-ranked.
        `assign` already offers what each new face reveals, until the next pass ranks it."""
        import suggestions

        return await suggestions.refresh_merge_suggestions(conn, self.params)

    # --- deciding ------------------------------------------------------------------------------

    async def _decide_unit(self, conn, embeddings: Sequence[np.ndarray],
                           low_quality: Sequence[bool], neighbour_lists: list[list[Neighbour]],
                           excluded: set[int], *, group: bool = False):
        """The joining rule for one unit, with its candidates' persons and the operator's facts
        read from the database; for a founding `group`, (decision, `may_found`)."""
        queries_ = [FaceQuery(e, self.params.threshold(lq), ns)
                    for e, lq, ns in zip(embeddings, low_quality, neighbour_lists)]
        persons = await search.person_views(
            conn, {n.person_id for ns in neighbour_lists for n in ns if n.person_id is not None})
        rejections = await search.rejections(conn, [n.face_id for ns in neighbour_lists
                                                    for n in ns])
        decision = decide(queries_, persons, self.rules, excluded=excluded,
                          vetoed=vetoes(neighbour_lists, rejections))
        if group:
            return decision, may_found(queries_, persons, excluded=excluded)
        return decision

    async def _neighbours(self, conn, embedding: np.ndarray, media_item_id: int,
                          skip: frozenset[int] = frozenset()) -> list[Neighbour]:
        # the exclusions are inside the index scan: k faces come back that pass them
        return await search.knn(conn, embedding, self.params.k, self.params.suggest_threshold,
                                media_item_id=media_item_id, skip=skip,
                                with_embedding=self.params.pending_support)

    async def _decide_new(self, run: Run, units: list[_Unit]) -> None:
        """Search and decide for the new faces; units with the strongest claim choose first."""
        conn = run.conn
        taken = await search.media_persons(conn, run.media_item_id, [])
        for unit in units:
            unit.neighbours = [await self._neighbours(conn, e, run.media_item_id)
                               for e in unit.embeddings]
        for unit in sorted(units, key=lambda u: -u.claim):
            unit.decision = await self._decide_unit(conn, unit.embeddings, unit.low_quality,
                                                    unit.neighbours, taken)
            if unit.decision.state == "assigned":
                taken.add(unit.decision.person_id)

    def _needs_lock(self, units: list[_Unit]) -> bool:
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

    async def _claim(self, run: Run, units: list[_Unit]) -> None:
        """Lock the chosen persons (in id order) against a concurrent merge, hide or dissolve."""
        for person_id in sorted({u.decision.person_id for u in units
                                 if u.decision.state == "assigned"}):
            now = await run.claim_person(person_id)
            taken = {u.decision.person_id for u in units if u.decision.state == "assigned"}
            for unit in units:
                if unit.decision.state == "assigned" and unit.decision.person_id == person_id:
                    unit.decision = (
                        replace(unit.decision, person_id=now)
                        if now == person_id or (now is not None and now not in taken)
                        else Decision("pending", similarity=unit.decision.similarity))

    async def _store(self, run: Run, units: list[_Unit], faces: Sequence[DetectedFace],
                     media: tuple, job_id: int | None) -> None:
        p = self.params
        for unit in units:
            d = unit.decision
            kept: list[np.ndarray] = []
            for index, embedding, lq, neighbours in zip(unit.indices, unit.embeddings,
                                                        unit.low_quality, unit.neighbours):
                nearest = max((n.similarity for n in neighbours
                               if d.state == "assigned" and n.person_id == d.person_id),
                              default=None)
                if ((nearest is not None and nearest >= p.duplicate_similarity)
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
                    "similarity": d.similarity,
                    "review_candidates": (Jsonb([asdict(c) for c in d.candidates])
                                          if d.state == "review" else None),
                })).fetchone()
                unit.face_ids.append(row[0])
                kept.append(embedding)
                if d.state == "assigned":
                    run.grown.append((row[0], d.person_id, embedding))
            if d.state == "assigned":
                await run.make_due(d.person_id, [run.media_item_id])
                for neighbours in unit.neighbours:
                    for n in neighbours:
                        run.note_pair(d.person_id, n)

    # --- creating persons ----------------------------------------------------------------------

    async def _seed(self, run: Run, unit: _Unit) -> None:
        """Found a person from this pending unit and agreeing pending faces (complete linkage),
        or let the group join the person it already is."""
        conn, p = run.conn, self.params
        stored = [fid for fid in unit.face_ids if fid is not None]
        own = await search.pending_units(conn, stored)
        if {m.face_id for m in own} != set(stored):
            return  # a cascade already placed this unit
        lq = dict(zip(unit.face_ids, unit.low_quality))
        founders = [m for m in own if not lq.get(m.face_id, True)]
        candidates: dict[int, tuple[float, PendingFace]] = {}
        for anchor in founders:
            for sim, c in await search.seed_candidates(conn, anchor.embedding, p.seed_k,
                                                       p.seed_threshold,
                                                       media_item_id=run.media_item_id):
                if c.face_id not in candidates or candidates[c.face_id][0] < sim:
                    candidates[c.face_id] = (sim, c)
        group = seed_group(founders, list(candidates.values()), self.rules)
        if group is None:
            return
        members = {m.face_id: m for m in group}
        for mate in await search.pending_units(conn, list(members)):
            members.setdefault(mate.face_id, mate)  # the rest of the founders' video tracks
        ordered = list(members.values())
        decision, founds = await self._decide_group(conn, ordered)
        if decision.state == "review" or (decision.state == "pending" and not founds
                                          and self.rules.wait_near_person):
            return  # the group looks like a known person, but not clearly: it waits
        centre = unit_vector(np.sum([g.embedding for g in group], axis=0))
        if decision.state == "assigned":
            person_id = decision.person_id
            similarities = [decision.similarity] * len(ordered)
            by = "auto"
        else:
            person_id = await run.create_person()
            similarities = [float(m.embedding @ centre) for m in ordered]
            by = "seed"
        joined = await run.assign(person_id, ordered, similarities, by)
        logger.info("%s person %s with %d faces from %d media items",
                    "created" if by == "seed" else "grew", joined, len(ordered),
                    len({m.media_item_id for m in ordered}))

    async def _decide_group(self, conn, group: list[PendingFace]) -> tuple[Decision, bool]:
        """The joining rule for a would-be founding group as one unit, and whether it may found
        a person if it joins none (`may_found`)."""
        ids = frozenset(m.face_id for m in group)
        neighbour_lists = [await self._neighbours(conn, m.embedding, m.media_item_id, ids)
                           for m in group]
        excluded: set[int] = set()
        for media_item_id in {m.media_item_id for m in group}:
            excluded |= await search.media_persons(conn, media_item_id, sorted(ids))
        own = await search.rejections(conn, sorted(ids))
        excluded = excluded.union(*own.values())
        return await self._decide_unit(conn, [m.embedding for m in group],
                                       [m.low_quality for m in group], neighbour_lists, excluded,
                                       group=True)

    async def _cascade(self, run: Run) -> None:
        """Pending faces near faces that just joined (or founded) a person are decided again."""
        conn, p = run.conn, self.params
        tried: set[tuple] = set()
        while run.grown and len(tried) < p.cascade_limit:
            _face_id, person_id, embedding = run.grown.popleft()
            for n in await search.knn(conn, embedding, p.k, p.suggest_threshold):
                run.note_pair(person_id, n)
                key = (n.media_item_id, n.track_id) if n.track_id is not None else (n.face_id,)
                if (n.state != "pending" or key in tried or n.similarity < p.similarity_threshold
                        or len(tried) >= p.cascade_limit):
                    continue
                tried.add(key)
                unit = await search.pending_units(conn, [n.face_id])
                if unit:
                    await self._redecide(run, unit)

    async def _redecide(self, run: Run, unit: list[PendingFace]) -> None:
        """The joining rule for a stored pending unit (of another media item); joins if clear."""
        conn = run.conn
        media_item_id = unit[0].media_item_id
        ids = [m.face_id for m in unit]
        neighbour_lists = [await self._neighbours(conn, m.embedding, media_item_id) for m in unit]
        excluded = await search.media_persons(conn, media_item_id, ids)
        own = await search.rejections(conn, ids)
        excluded = excluded.union(*own.values())
        decision = await self._decide_unit(conn, [m.embedding for m in unit],
                                           [m.low_quality for m in unit], neighbour_lists, excluded)
        if decision.state == "assigned":
            await run.assign(decision.person_id, unit, [decision.similarity] * len(unit), "auto")

    # --- outcomes ------------------------------------------------------------------------------

    async def _outcomes(self, run: Run, units: list[_Unit]) -> list[FaceOutcome]:
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
        embedding = unit_vector(np.asarray(face.embedding, dtype=np.float32))
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
