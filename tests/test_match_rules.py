"""The matcher's rules (match_rules.py) on numbers: no database, no model."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from match_rules import (Decision, FaceQuery, Neighbour, PendingFace, PersonView, RuleParams,
                         cohesion, decide, may_found, seed_group, sightings, vetoes)

RULES = RuleParams(margin=0.007, seed_threshold=0.945, min_faces=3, duplicate_similarity=0.996,
                   min_support=0.67, cohesion_slack=0.025, cohesion_full_size=5)
JOIN = 0.93
AXIS = np.array([1.0, 0.0, 0.0], np.float32)


def person(person_id: int, size: int, linkage_of_axis: float, tightness: float) -> PersonView:
    """A person of `size` faces whose mean has dot product `linkage_of_axis` with AXIS and
    whose faces are `tightness` alike on average (|mean|^2 = (1 + (n-1) c) / n)."""
    length = np.sqrt((1 + (size - 1) * tightness) / size)
    other = np.sqrt(max(length ** 2 - linkage_of_axis ** 2, 0.0))
    return PersonView(person_id, size, np.array([linkage_of_axis, other, 0.0], np.float32))


def n(face_id, person_id, similarity, state="assigned", low_quality=False, embedding=None):
    return Neighbour(face_id, person_id, state if person_id is None else "assigned",
                     face_id * 10, None, low_quality, similarity, embedding)


def face(*neighbours, threshold=JOIN) -> list[FaceQuery]:
    return [FaceQuery(AXIS, threshold, list(neighbours))]


def test_cohesion_is_the_mean_similarity_between_a_persons_faces():
    rng = np.random.default_rng(1)
    faces = rng.standard_normal((6, 8))
    faces /= np.linalg.norm(faces, axis=1, keepdims=True)
    pairs = [float(a @ b) for a, b in itertools.combinations(faces, 2)]
    assert cohesion(PersonView(1, 6, faces.mean(axis=0))) == pytest.approx(np.mean(pairs), abs=1e-6)
    assert cohesion(PersonView(1, 1, faces[0])) is None


def test_a_face_close_to_the_person_as_a_whole_joins():
    decision = decide(face(n(1, 7, 0.96), n(2, 7, 0.95), n(3, 7, 0.94)),
                      {7: person(7, 6, 0.945, 0.95)}, RULES)
    assert (decision.state, decision.person_id, decision.similarity) == ("assigned", 7, 0.945)


def test_one_close_member_is_not_enough_no_chaining():
    # Very like one face at the edge of the person (0.97), but 0.915 like the person on
    # average: single linkage would take it, average linkage does not.
    decision = decide(face(n(1, 7, 0.97)), {7: person(7, 8, 0.915, 0.94)}, RULES)
    assert decision.state == "pending" and decision.similarity == 0.915


def test_a_tight_person_asks_more_than_the_threshold():
    neighbours = (n(1, 7, 0.95), n(2, 7, 0.94))
    # Faces 0.97 alike: a face 0.935 like them is 0.035 below (slack 0.025): someone else.
    assert decide(face(*neighbours), {7: person(7, 10, 0.935, 0.97)}, RULES).state == "pending"
    # The same linkage to a looser person (0.955) is within its spread.
    assert decide(face(*neighbours), {7: person(7, 10, 0.935, 0.955)}, RULES).state == "assigned"


def test_a_small_persons_slack_is_smaller():
    neighbours = (n(1, 7, 0.95), n(2, 7, 0.94))
    # 0.015 below a 0.96 cohesion: within slack at 10 faces (0.025), not at 2 (0.025 * 2/5 = 0.01).
    assert decide(face(*neighbours), {7: person(7, 10, 0.945, 0.96)}, RULES).state == "assigned"
    assert decide(face(*neighbours), {7: person(7, 2, 0.945, 0.96)}, RULES).state == "pending"


def test_a_close_runner_up_means_review():
    persons = {7: person(7, 6, 0.945, 0.95), 8: person(8, 6, 0.941, 0.95)}
    decision = decide(face(n(1, 7, 0.95), n(2, 8, 0.95)), persons, RULES)
    assert decision.state == "review"
    assert [c.person_id for c in decision.candidates] == [7, 8]
    # A runner-up further than the margin does not stop the winner.
    persons[8] = person(8, 6, 0.935, 0.95)
    assert decide(face(n(1, 7, 0.95), n(2, 8, 0.95)), persons, RULES).person_id == 7


def test_excluded_persons_give_way_to_the_next_candidate():
    persons = {7: person(7, 6, 0.95, 0.95), 8: person(8, 6, 0.94, 0.95)}
    neighbours = face(n(1, 7, 0.96), n(2, 8, 0.95))
    assert decide(neighbours, persons, RULES, excluded={7}).person_id == 8
    assert decide(neighbours, persons, RULES, excluded={7, 8}).state == "pending"


def test_good_pending_faces_nearby_hold_the_face_back():
    persons = {7: person(7, 6, 0.94, 0.95)}
    waiting = [n(10 + k, None, 0.95, "pending") for k in range(3)]
    # Three good pending faces closer than the person's one face: someone not (yet) a person.
    assert decide(face(n(1, 7, 0.94), *waiting), persons, RULES).state == "pending"
    # Low-quality pending faces can never found a person: they don't count.
    poor = [n(10 + k, None, 0.95, "pending", low_quality=True) for k in range(3)]
    assert decide(face(n(1, 7, 0.94), *poor), persons, RULES).state == "assigned"


def test_pending_faces_that_are_the_person_too_support_it_when_asked():
    rules = replace(RULES, pending_support=True)
    persons = {7: person(7, 6, 0.94, 0.95)}
    mean = persons[7].mean
    # Pending faces as close to the person as a whole as a joining face must be (0.94 >= the
    # join threshold 0.93 and the person's cohesion 0.95 - slack 0.025): the person's faces,
    # seen before the person was founded. They count for it, and the face joins.
    own = unit(1, 0, 0)
    assert float(own @ mean) == pytest.approx(0.94, abs=1e-4)
    alike = [n(10 + k, None, 0.95, "pending", embedding=own) for k in range(3)]
    assert decide(face(n(1, 7, 0.94), *alike), persons, rules).state == "assigned"
    # By default (RuleParams.pending_support off) every good pending face counts against.
    assert decide(face(n(1, 7, 0.94), *alike), persons, RULES).state == "pending"
    # Pending faces close to this face but 0.92 like the person: someone else's, they hold it.
    other = unit(0.95, 0.09, 0.299)
    assert 0.91 < float(other @ mean) < 0.925
    apart = [n(10 + k, None, 0.95, "pending", embedding=other) for k in range(3)]
    assert decide(face(n(1, 7, 0.94), *apart), persons, rules).state == "pending"


def test_a_rejected_look_alike_vetoes_its_person():
    # Face 1 was moved out of person 7 by the operator and is the closest thing to this face.
    neighbours = [n(1, None, 0.97, "pending"), n(2, 7, 0.95), n(3, 7, 0.95)]
    vetoed = vetoes([neighbours], {1: {7}})
    assert vetoed == {7}
    decision = decide(face(*neighbours), {7: person(7, 6, 0.945, 0.95)}, RULES, vetoed=vetoed)
    assert decision.state == "review"
    # A rejected face farther away than the person's own faces says nothing.
    assert vetoes([[n(2, 7, 0.95), n(1, None, 0.90, "pending")]], {1: {7}}) == set()


def test_the_faces_of_a_track_decide_together():
    persons = {7: person(7, 6, 0.95, 0.95)}
    track = [FaceQuery(AXIS, JOIN, [n(1, 7, 0.95)]),
             FaceQuery(np.array([0.0, 0.0, 1.0], np.float32), JOIN, [])]  # unlike everybody
    # The mean over the track's faces (0.95 and 0.0) is far below the threshold.
    assert decide(track, persons, RULES).state == "pending"
    assert decide(track[:1], persons, RULES).state == "assigned"


def test_no_neighbour_means_pending():
    assert decide(face(), {}, RULES) == Decision("pending", similarity=None)


def unit(*v):
    a = np.array(v, np.float32)
    return a / np.linalg.norm(a)


def pending(face_id, media, vector, track=None):
    return PendingFace(face_id, media, track, vector)


def test_seeding_is_complete_linkage():
    a, b = pending(1, 1, unit(1, 0.0, 0)), pending(2, 2, unit(1, 0.25, 0))
    c = pending(3, 3, unit(1, 0.5, 0))
    # a-b 0.970, b-c 0.976, a-c 0.894: c is like b but not like a; without c, two faces only.
    assert seed_group([a], [(0.97, b), (0.89, c)], RULES) is None
    d = pending(4, 4, unit(1, 0.12, 0.05))
    group = seed_group([a], [(0.97, b), (0.99, d), (0.89, c)], RULES)
    assert {g.face_id for g in group} == {1, 2, 4}


def test_seeding_takes_one_face_per_photo_and_counts_duplicates_once():
    a = pending(1, 1, unit(1, 0, 0))
    same_photo = pending(2, 1, unit(1, 0.01, 0))
    copy = pending(3, 2, unit(1, 0.001, 0))      # the same photo posted again (>= 0.996)
    other = pending(4, 3, unit(1, 0.1, 0))
    assert seed_group([a], [(0.99, same_photo), (0.99, copy), (0.99, other)], RULES) is None
    assert sightings([a, copy, other], 0.996) == 2
    third = pending(5, 4, unit(1, -0.1, 0.05))
    assert len(seed_group([a], [(0.99, copy), (0.99, other), (0.99, third)], RULES)) == 4


def test_a_group_at_the_threshold_of_a_known_person_waits_rather_than_split_it():
    # Linkage 0.94 to a tight person (cohesion 0.99: 0.94 is more than the slack below): the
    # group joins nobody, and founding it would make the person twice: it waits.
    persons = {7: person(7, 10, 0.94, 0.99)}
    group = face(n(1, 7, 0.95)) * 3
    assert decide(group, persons, RULES).state == "pending"
    assert not may_found(group, persons)
    # Unless that person is one it may not join (seen beside it in one photo, say).
    assert may_found(group, persons, excluded={7})
    # A person 0.92 like the group as a whole: someone else; the group founds its own.
    assert may_found(group, {7: person(7, 10, 0.92, 0.95)})
    assert may_found(face(), {})
