"""Measure: splitting a person that holds 30 people's 79 faces takes fewer than 40 of the
operator's actions. The person is made of real dlib embeddings of LFW photos
(tests/lfw_dlib_subset.npz): 21 faces of one man and 2 each of 29 others, as a matcher with a
too-loose threshold would leave them. The operator works in the dashboard (AppTest): every
click, choice and page opened is counted; what to fix after the split is decided by who each
face really is, as an operator who knows the people would."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from dashboard_pages.split import look_alike_groups
from identity_matcher import MatchParams
from test_dashboard import db, faces_of, pick, signed_in  # noqa: F401
from test_dashboard_support import filled_db, filled_template  # noqa: F401

LFW = Path(__file__).resolve().parent / "lfw_dlib_subset.npz"
PEOPLE, FACES, MAIN = 30, 79, 21


def lfw_people(seed: int = 18) -> list[tuple[int, np.ndarray, float]]:
    """(identity, embedding, quality) of 79 centred faces: 21 of one man, 2 of 29 others."""
    d = np.load(LFW)
    identity = np.array([d["identity"][p] if centred else -1 for p, centred in zip(d["photo"], d["is_centred"])])
    rng = np.random.default_rng(seed)
    names, counts = np.unique(identity[identity >= 0], return_counts=True)
    main = rng.choice(names[counts >= MAIN])
    others = rng.choice(names[(counts >= 2) & (names != main)], PEOPLE - 1, replace=False)
    chosen = [(main, i) for i in rng.choice(np.flatnonzero(identity == main), MAIN, replace=False)]
    chosen += [(o, i) for o in others for i in rng.choice(np.flatnonzero(identity == o), 2, replace=False)]
    return [(int(who), d["embeddings"][i], float(d["quality"][i])) for who, i in chosen]


def mixed_person(db) -> tuple[int, dict[int, int]]:
    """A person holding the 79 faces (one picture for all: the grid needs one); return it and
    {face id: who it really is}."""
    person = db.execute("INSERT INTO telegram_topics (label) VALUES ('Mixed') RETURNING id").fetchone()[0]
    crop = db.execute("SELECT crop_jpeg FROM face_embeddings WHERE crop_jpeg IS NOT NULL LIMIT 1").fetchone()[0]
    truth = {}
    for n, (who, embedding, quality) in enumerate(lfw_people()):
        truth[db.execute("""INSERT INTO face_embeddings (topic_id, embedding, source_chat_id, source_message_id,
                                quality_score, state, assigned_by, crop_jpeg)
                            VALUES (%s, %s::real[]::vector, -1009, %s, %s, 'assigned', 'auto', %s) RETURNING id""",
                         (person, embedding.tolist(), 9000 + n, quality, crop)).fetchone()[0]] = who
    db.execute("UPDATE telegram_topics SET embedding_count = %s WHERE id = %s", (FACES, person))
    return person, truth


def test_the_groups_are_what_the_matcher_would_make():
    people = lfw_people()
    groups = look_alike_groups(np.array([e for _, e, _ in people]),
                               MatchParams.for_engine("dlib").similarity_threshold)
    assert sum(len(g) for g in groups) == FACES
    mixed = sum(len(g) - Counter(people[i][0] for i in g).most_common(1)[0][1] for g in groups)
    assert len(groups) >= PEOPLE - 2 and mixed <= 4


def test_splitting_30_people_out_of_one_person_takes_fewer_than_40_actions(db):  # noqa: F811
    person, truth = mixed_person(db)
    actions = 0

    def act(widget) -> None:
        nonlocal actions
        actions += 1
        widget.run()

    at = signed_in()
    at.query_params["person"] = str(person)
    at.switch_page("dashboard_pages/person.py")
    act(at)                                                           # open the person
    act(at.button(key=f"split_{person}_find").click())               # find the groups
    assert not at.exception, [e.value for e in at.exception]
    act(at.button(key=f"split_{person}_go").click())                 # split
    assert at.success[0].value.startswith("Split: ")

    def placement() -> dict[int, list[int]]:
        """{person: its faces} of the faces that were in the mixed person."""
        rows = db.execute("SELECT topic_id, id FROM face_embeddings WHERE id = ANY(%s)", (list(truth),)).fetchall()
        by_person: dict[int, list[int]] = {}
        for where, face in rows:
            by_person.setdefault(where, []).append(face)
        return by_person

    def owner(faces: list[int]) -> int:
        return Counter(truth[f] for f in faces).most_common(1)[0][0]

    # Faces in a person of somebody else: moved to the person of whom they are.
    for where, faces in placement().items():
        for face in [f for f in faces if truth[f] != owner(faces)]:
            homes = [p for p, fs in placement().items() if p != where and owner(fs) == truth[face]]
            at.query_params["person"] = str(where)
            act(at.switch_page("dashboard_pages/person.py"))
            pick(at, db, where, face)
            actions += 1
            if homes:
                act(at.radio(key=f"move_dest_{where}").set_value("other"))
                act(at.selectbox(key=f"move_target_{where}").select(homes[0]))
            act(at.button(key=f"move_go_{where}").click())
    # One man in two persons: merged.
    while True:
        by_owner: dict[int, list[int]] = {}
        for where, faces in placement().items():
            by_owner.setdefault(owner(faces), []).append(where)
        split_twice = [ps for ps in by_owner.values() if len(ps) > 1]
        if not split_twice:
            break
        keep, other = sorted(split_twice[0])[:2]
        at.query_params["person"] = str(other)
        act(at.switch_page("dashboard_pages/person.py"))
        act(at.selectbox(key=f"merge_other_{other}").select(keep))
        act(at.radio(key=f"merge_keep_{other}").set_value(keep))
        act(at.button(key=f"merge_go_{other}").click())
        assert not at.error, [e.value for e in at.error]

    final = placement()
    assert len(final) == PEOPLE
    assert all(len({truth[f] for f in faces}) == 1 for faces in final.values())
    print(f"\nsplitting {PEOPLE} people's {FACES} faces out of one person: {actions} actions")
    assert actions < 40
