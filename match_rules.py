"""The matcher's decisions as pure functions over plain data (no database, no I/O).

A face joins a person by its **average linkage** to the person: the mean of its similarities to
all of the person's faces, which is the face's dot product with the person's mean embedding
(`PersonView.mean`, not normalised). A person therefore grows only with faces that agree with it
as a whole: a face close to one or two members at the edge of a person, and far from the rest,
does not join. Chaining (single linkage, a person growing one nearest neighbour at a time, which
merged 435 news people into a few dozen persons) cannot happen, and the person's own spread is in
the rule: a loose person's mean vector is shorter, so a face needs to be closer to its members.

`decide` is the rule for one unit (a photo face, or the faces of one video track); `vetoes`
applies the operator's "not this person" facts; `seed_group` is the complete-linkage rule that
gathers a founding group from the pending pool, and `may_found` says whether a group that joins
nobody founds a person or waits. identity_matcher.py feeds them from the database;
bench/tune_persons.py feeds the same functions from numpy, to tune the numbers offline on
faces-lfw (identity_matcher.MatchParams, engine defaults in media_processor.ENGINES).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np


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
    embedding: np.ndarray | None = None  # needed to tell whether a pending neighbour is the
    #                                      winner's too (`decide`'s support); None: unknown


@dataclass(frozen=True)
class PersonView:
    """What a decision needs to know about a candidate person."""

    person_id: int
    size: int                   # its faces
    mean: np.ndarray            # the mean of its faces' (unit) embeddings, not normalised


@dataclass(frozen=True)
class FaceQuery:
    """One face of the unit being decided: its embedding, join threshold and neighbours."""

    embedding: np.ndarray
    threshold: float
    neighbours: Sequence[Neighbour]


@dataclass(frozen=True)
class Candidate:
    person_id: int
    similarity: float           # average linkage: mean similarity to the person's faces
    votes: float                # the person's faces among the unit's neighbours (support)


@dataclass(frozen=True)
class Decision:
    state: Literal["assigned", "pending", "review"]
    person_id: int | None = None
    similarity: float | None = None
    candidates: tuple[Candidate, ...] = ()


@dataclass(frozen=True)
class RuleParams:
    """The numbers `decide` and `seed_group` use (a subset of identity_matcher.MatchParams)."""

    margin: float               # winner's linkage over the runner-up's, else review
    seed_threshold: float       # every pair of founding faces
    min_faces: int = 3
    duplicate_similarity: float = 0.98
    cohesion_slack: float = 1.0  # a face may be this much less like a person than its faces
    #                              are like each other on average (`cohesion`) ...
    cohesion_full_size: int = 1  # ... once the person has this many faces; a smaller person's
    #                              cohesion says less, and its slack is smaller in proportion
    min_support: float = 0.5    # share of the unit's neighbours at the threshold that must be the
    #                             winner's faces (pending faces and other persons' count against)
    seed_floor: float | None = None  # every pair of founding faces at least this alike, and the
    #                             pairs on average `seed_threshold` (None: every pair at that)
    # Two recall rules measured in issue 14's second session, off by default because they cost
    # precision on faces-lfw (bench/bench_persons.py's docstring has the figures): at 5,130
    # photos, both on, recall 0.91 / 0.92 / 0.89 in orders 1-3 against 0.71 / 0.76 / 0.75, but
    # precision 0.988 / 0.994 / 0.972 against 0.993 / 0.994 / 0.996: persons founded from two
    # look-alikes (sisters, or three faces of different people >= 0.945 pairwise) no longer
    # stay small, they grow with both people's faces.
    pending_support: bool = False  # pending neighbours that would join the winner count for it
    wait_near_person: bool = False  # a founding group at a known person's threshold waits
    #                                 (`may_found`) instead of founding a second person

    @property
    def seed_pair_floor(self) -> float:
        return self.seed_threshold if self.seed_floor is None else self.seed_floor


def linkage(query: FaceQuery, person: PersonView) -> float:
    """Average linkage of one face to a person (its mean similarity to the person's faces)."""
    return float(np.dot(query.embedding, person.mean))


def cohesion(person: PersonView) -> float | None:
    """The mean similarity between two different faces of the person (None below 2 faces):
    with n unit vectors of mean m, |m|^2 = (1 + (n - 1) * cohesion) / n."""
    n = person.size
    if n < 2:
        return None
    return float((n * float(np.dot(person.mean, person.mean)) - 1.0) / (n - 1))


def slack(person: PersonView, params: RuleParams) -> float:
    """How far below its cohesion a face may be to join the person."""
    return params.cohesion_slack * min(1.0, person.size / params.cohesion_full_size)


def _cohesion_bar(person: PersonView, params: RuleParams) -> float:
    tight = cohesion(person)
    return -1.0 if tight is None else tight - slack(person, params)


def candidate_persons(faces: Sequence[FaceQuery]) -> set[int]:
    """Persons that own at least one of the unit's neighbours."""
    return {n.person_id for f in faces for n in f.neighbours if n.person_id is not None}


def decide(faces: Sequence[FaceQuery], persons: Mapping[int, PersonView], params: RuleParams, *,
           excluded: frozenset[int] | set[int] = frozenset(),
           vetoed: frozenset[int] | set[int] = frozenset()) -> Decision:
    """Which person the unit (one photo face, or the faces of one video track) joins.

    Candidates are the persons owning its neighbours (`persons` must hold each of them, else it
    is ignored). A unit's linkage to a person is the mean over its faces of `linkage`, compared
    with the mean of the faces' thresholds (a low-quality face has a stricter one). In order:
    no candidate at the threshold: pending; the two best within `margin` of each other: review
    (between two persons); the best more than its `slack` below the person's own `cohesion`:
    pending (a look-alike of a tight person); the best vetoed by an operator fact: review; fewer
    than `min_support` of the close faces that belong to the best person or to nobody yet are
    the person's: pending (it waits with the pending faces it resembles, which may found a
    person that is then decided against this one as a whole); else it joins. `excluded`:
    persons the unit may not join (taken by another face of the media item, or the operator
    moved these faces out of them).
    """
    threshold = float(np.mean([f.threshold for f in faces]))
    scored: list[tuple[Candidate, bool]] = []   # (candidate, whether the person's spread allows it)
    for person_id in candidate_persons(faces):
        person = persons.get(person_id)
        if person is None or person_id in excluded or person.size == 0:
            continue
        link = float(np.mean([linkage(f, person) for f in faces]))
        tight = cohesion(person)
        support = sum(1 for f in faces for n in f.neighbours
                      if n.person_id == person_id and n.similarity >= f.threshold)
        scored.append((Candidate(person_id, round(link, 4), float(support)),
                       tight is None or link >= tight - slack(person, params)))
    scored.sort(key=lambda item: (item[0].similarity, item[0].votes), reverse=True)
    at_threshold = [c for c, _ in scored if c.similarity >= threshold]
    if not at_threshold:
        best = scored[0][0].similarity if scored else _best_similarity(faces)
        return Decision("pending", similarity=best)
    candidates = tuple(at_threshold)
    if (len(at_threshold) > 1
            and at_threshold[0].similarity - at_threshold[1].similarity < params.margin):
        return Decision("review", similarity=at_threshold[0].similarity, candidates=candidates)
    winner, fits = scored[0]
    if not fits:
        # Well below what the person's own faces are to each other: not (yet) one of them.
        return Decision("pending", similarity=winner.similarity)
    if winner.person_id in vetoed:
        return Decision("review", similarity=winner.similarity, candidates=candidates)
    # Support: most of the faces this close that belong to nobody yet must be the winner's
    # faces. Good pending faces close to this one are someone the person's faces are not (or
    # not yet): the face waits with them (and may found a person with them, which then is
    # decided against this person as a whole). A pending face that is itself as close to the
    # person as a whole as a face must be to join it may be the person's too (seen before the
    # person was, or held back by the others): with `pending_support` it supports the winner
    # instead (off by default: on faces-lfw it lets a look-alike's pending faces into a person,
    # see RuleParams).
    person = persons[winner.person_id]
    bar = max(threshold, _cohesion_bar(person, params))
    votes, waiting = winner.votes, 0
    for f in faces:
        for n in f.neighbours:
            if (n.person_id is None and n.state in ("pending", "review") and not n.low_quality
                    and n.similarity >= f.threshold):
                if (params.pending_support and n.embedding is not None
                        and float(np.dot(n.embedding, person.mean)) >= bar):
                    votes += 1
                else:
                    waiting += 1
    if votes < params.min_support * (votes + waiting):
        return Decision("pending", similarity=winner.similarity)
    return Decision("assigned", winner.person_id, winner.similarity, candidates)


def may_found(faces: Sequence[FaceQuery], persons: Mapping[int, PersonView], *,
              excluded: frozenset[int] | set[int] = frozenset()) -> bool:
    """Whether a would-be founding group (its faces as one unit) that `decide` put in no person
    may found a new one: only if no person it may join is, as a whole, as close to it as a face
    must be to join (average linkage at the threshold). A group that close to a known person,
    held back by that person's spread or by waiting faces or between two persons, is most likely
    that person seen from another side: founding it would split the person in two (seen on
    faces-lfw: the same people founded twice, their later faces in review between the halves).
    It waits, and its faces join the person as it grows towards them."""
    threshold = float(np.mean([f.threshold for f in faces]))
    for person_id in candidate_persons(faces):
        person = persons.get(person_id)
        if person is None or person_id in excluded or person.size == 0:
            continue
        if float(np.mean([linkage(f, person) for f in faces])) >= threshold:
            return False
    return True


def _best_similarity(faces: Sequence[FaceQuery]) -> float | None:
    sims = [n.similarity for f in faces for n in f.neighbours if n.person_id is not None]
    return max(sims, default=None)


def vetoes(neighbour_lists: Sequence[Sequence[Neighbour]],
           rejections: Mapping[int, set[int]]) -> set[int]:
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
class PendingFace:
    """A face of the pending pool, as seeding sees it."""

    face_id: int
    media_item_id: int
    track_id: int | None
    embedding: np.ndarray
    low_quality: bool = False

    def same_track(self, other: PendingFace) -> bool:
        return (self.media_item_id == other.media_item_id and self.track_id is not None
                and self.track_id == other.track_id)


def seed_group(founders: Sequence[PendingFace], candidates: Sequence[tuple[float, PendingFace]],
               params: RuleParams) -> list[PendingFace] | None:
    """Complete linkage: the founders (a new unit's good faces) and, best first, every candidate
    (similarity, pending face) that is at least `seed_threshold` like every face already in the
    group (faces of one video track are one person among themselves; two faces of one photo or
    two tracks of one video never are). The group founds a person if it has `min_faces`
    sightings (near-duplicates of different media items count once) from at least 2 media
    items; otherwise None."""
    group = list(founders)
    floor = params.seed_pair_floor
    pairs = [float(a.embedding @ b.embedding) for i, a in enumerate(group) for b in group[i + 1:]
             if not a.same_track(b)]
    for _, c in sorted(candidates, key=lambda item: -item[0]):
        if any(g.face_id == c.face_id for g in group):
            continue
        if any(g.media_item_id == c.media_item_id and not g.same_track(c) for g in group):
            continue
        new = [float(c.embedding @ g.embedding) for g in group if not g.same_track(c)]
        if all(s >= floor for s in new) and (
                not pairs + new or np.mean(pairs + new) >= params.seed_threshold):
            group.append(c)
            pairs += new
    media = {g.media_item_id for g in group}
    if sightings(group, params.duplicate_similarity) < params.min_faces or len(media) < 2:
        return None
    return group


def sightings(group: Sequence[PendingFace], duplicate_similarity: float) -> int:
    """Faces in the group, counting near-identical faces of different media items once."""
    counted: list[PendingFace] = []
    for m in group:
        if not any(c.media_item_id != m.media_item_id
                   and float(c.embedding @ m.embedding) >= duplicate_similarity for c in counted):
            counted.append(m)
    return len(counted)


def unit_vector(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)
