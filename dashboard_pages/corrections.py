"""The operator's corrections, as forms: each says what will change (on Telegram first) before
the button that makes the change, and makes it through persons.py.

persons.py records what Telegram must do in dashboard_actions; the daemon applies it. The
previews here count what a correction touches with queries of sql/dashboard.sql, following the
rules persons.py documents.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

import persons
from dashboard_pages import app
from database import queries

Person = dict[str, Any]


def on_telegram(lines: list[str]) -> None:
    """What a correction changes on Telegram, shown before its button."""
    st.info("**On Telegram:**\n" + "\n".join(f"- {line}" for line in lines), icon=":material/send:")


def apply(fn: Callable[..., Any], *args: Any, done: str | Callable[[Any], str],
          person_id: int | None = None) -> None:
    """Make a correction; on success remember `done` (or `done(result)`) for the next run, open
    `person_id` (if given) and rerun. A refused correction (persons.CorrectionError) is shown
    and nothing changes."""
    try:
        result = app.change(fn, *args, summary=done)
    except persons.CorrectionError as exc:
        st.error(f"Not changed: {app.md(exc)}")
        return
    app.flash(done(result) if callable(done) else done)
    if person_id is not None:
        st.query_params["person"] = str(person_id)
    st.rerun()


def brief(person_ids: list[int]) -> dict[int, Person]:
    """{id asked: the person now (followed through merges)} with label, cover, counts."""
    return {r["person_id"]: r for r in app.rows(queries.dashboard_persons_brief, {"person_ids": person_ids})}


def name(person: Person) -> str:
    """A person's name in «», escaped: every message here is read as Markdown."""
    return f"«{app.md(person['label'])}»"


# --- rename ------------------------------------------------------------------------------------


def rename(person: Person) -> None:
    key = f"rename_{person['id']}"
    typed = st.text_input("Name", value=person["label"] if person["label_is_manual"] else "",
                          key=key, placeholder=person["label"],
                          help="The person's name is its topic's title (at most 128 bytes of UTF-8).")
    new = " ".join(typed.split())
    if not new or new == person["label"]:
        st.caption("Type the name and press Enter to see what changes.")
        return
    size = len(new.encode("utf-8"))
    if size > persons.TITLE_MAX_BYTES:
        st.error(f"Too long for a topic title: {size} bytes of UTF-8, at most {persons.TITLE_MAX_BYTES}.")
        return
    if person["topic_id"] is not None:
        on_telegram([f"the topic «{app.md(person['topic_title'] or person['label'])}» is renamed to "
                     f"«{app.md(new)}»."])
    else:
        on_telegram([f"nothing yet: {name(person)} has no topic; it is created as «{app.md(new)}» when its "
                     "first post is due."])
    st.caption("A named person is never dissolved or renamed by the matcher.")
    if st.button(f"Rename to «{app.md(new)}»", key=f"{key}_go", type="primary"):
        apply(persons.rename_person, person["id"], new, done=f"Renamed to «{app.md(new)}».")


# --- merge -------------------------------------------------------------------------------------


def chosen_cover(conn, person_id: int) -> int | None:
    row = conn.execute(queries.dashboard_chosen_cover, {"person_id": person_id}).fetchone()
    return row[0] if row else None


def merge_persons(conn, survivor_id: int, absorbed_id: int, suggestion_id: int | None = None) -> None:
    """persons.merge_persons (or accepting suggestion `suggestion_id`), keeping the cover the
    operator chose: the survivor's, else the absorbed person's (a merge used to fall back to
    the automatic cover, losing the choice)."""
    carried = None if chosen_cover(conn, survivor_id) else chosen_cover(conn, absorbed_id)
    if suggestion_id is None:
        persons.merge_persons(conn, survivor_id, absorbed_id)
    else:
        persons.accept_merge_suggestion(conn, suggestion_id, survivor_id)
    if carried is not None:
        persons.choose_cover(conn, survivor_id, carried)


def default_survivor(a: Person, b: Person) -> int:
    """The one a merge keeps unless the operator says otherwise (and persons.accept_merge_suggestion
    too): named, then with a topic, then more faces, then the older one."""
    return max((a, b), key=lambda p: (p["label_is_manual"], p["topic_id"] is not None,
                                      p["faces"], -p["id"]))["id"]


def merge_effects(survivor: Person, absorbed: Person) -> list[str]:
    """What merging `absorbed` into `survivor` changes on Telegram (persons.merge_persons)."""
    counts = app.one(queries.dashboard_merge_preview,
                     {"survivor_id": survivor["id"], "absorbed_id": absorbed["id"]})
    takes_name = absorbed["label_is_manual"] and not survivor["label_is_manual"]
    final = app.md(absorbed["label"] if takes_name else survivor["label"])
    lines = []
    if absorbed["topic_id"] is not None:
        lines.append(f"the topic {name(absorbed)} gets a last message “Merged into {final}: its posts "
                     f"continue there.”, is renamed “→ merged into {final}” and closed; its posts stay.")
    else:
        lines.append(f"{name(absorbed)} has no topic: nothing to close.")
    if takes_name:
        lines.append(f"{name(survivor)} takes the name «{final}»"
                     + (" (its topic is renamed)." if survivor["topic_id"] is not None else "."))
    if counts["cancelled"]:
        lines.append(f"{app.plural(counts['cancelled'], 'post')} of {name(absorbed)} not sent yet "
                     f"{app.verb(counts['cancelled'], 'is', 'are')} cancelled.")
    if counts["new_posts"]:
        created = "" if survivor["topic_id"] is not None else " (created with the first post)"
        lines.append(f"{app.plural(counts['new_posts'], 'media item')} "
                     f"{app.verb(counts['new_posts'], 'becomes', 'become')} due in «{final}»'s "
                     f"topic{created}; what it has already is not posted again.")
    elif survivor["hidden"]:
        lines.append(f"{name(survivor)} is hidden: nothing new is posted.")
    else:
        lines.append(f"nothing new is posted: {name(survivor)} already has every media item.")
    return lines


def merge(person: Person, choices: list[Person]) -> None:
    others = {c["id"]: c for c in choices if c["id"] != person["id"]}
    if not others:
        st.caption("There is no other person to merge with.")
        return
    other_id = st.selectbox(
        "Same person as", list(others), index=None, key=f"merge_other_{person['id']}",
        placeholder="Choose a person",
        format_func=lambda i: f"{app.person_name(others[i]['label'], others[i]['hidden'])} "
                              f"({app.plural(others[i]['faces'], 'face')}, #{i})")
    if other_id is None:
        st.caption("Merging is for good: the faces of both become one person, and the matcher "
                   "never separates them again.")
        return
    pair = brief([person["id"], other_id])
    keep = st.radio("Keep", [person["id"], other_id], horizontal=True, key=f"merge_keep_{person['id']}",
                    index=[person["id"], other_id].index(default_survivor(pair[person["id"]], pair[other_id])),
                    format_func=lambda i: f"{app.md(pair[i]['label'])} (#{i})",
                    help="The person that stays; the other one's faces and posts move into it.")
    survivor, absorbed = pair[keep], pair[other_id if keep == person["id"] else person["id"]]
    on_telegram(merge_effects(survivor, absorbed))
    st.caption(f"{app.plural(absorbed['faces'], 'face')} {app.verb(absorbed['faces'], 'moves', 'move')} "
               f"to {name(survivor)}. Merging is for good.")
    if st.button(f"Merge {name(absorbed)} into {name(survivor)}", key=f"merge_go_{person['id']}",
                 type="primary"):
        apply(merge_persons, survivor["id"], absorbed["id"], person_id=survivor["id"],
              done=f"Merged {name(absorbed)} into {name(survivor)}.")


# --- hide --------------------------------------------------------------------------------------


def hide(person: Person) -> None:
    counts = app.one(queries.dashboard_hide_preview,
                     {"person_id": person["id"], "hidden_reason": persons.HIDDEN_REASON})
    has_topic = person["topic_id"] is not None
    if not person["hidden"]:
        on_telegram([
            "its topic is closed." if has_topic else "it has no topic, and none is created while it is hidden.",
            f"{app.plural(counts['cancelled'], 'post')} not sent yet "
            f"{app.verb(counts['cancelled'], 'is', 'are')} cancelled, and nothing new is posted.",
        ])
        st.caption("Its faces still join it (so it is not created again); it leaves the gallery "
                   "unless “Show hidden persons” is ticked. Unhide it here at any time.")
        if st.button("Hide", key=f"hide_{person['id']}", type="primary"):
            apply(persons.hide_person, person["id"], done=f"{name(person)} is hidden.")
    else:
        on_telegram([
            "its topic is reopened." if has_topic else "its topic is created when a post is due.",
            f"{app.plural(counts['resumed'], 'media item')} held back while hidden "
            f"{app.verb(counts['resumed'], 'becomes', 'become')} due.",
        ])
        if st.button("Unhide", key=f"unhide_{person['id']}", type="primary"):
            apply(persons.unhide_person, person["id"], done=f"{name(person)} is visible again.")


# --- move faces out ----------------------------------------------------------------------------

DESTINATIONS = {
    "keep": "Keep only the selected: the others shown wait for the matcher",
    "new": "A new person",
    "other": "Another person",
    "pending": "Nobody yet (not this person: let the matcher place them)",
    "dismiss": "Nobody (not a usable face: ignore it)",
}


def move_faces_to_new_person(conn, face_ids: list[int], label: str = "") -> int:
    """A new person of `face_ids`, named `label` if given, in one transaction."""
    new_id = persons.move_faces_to_new_person(conn, face_ids)
    if label:
        persons.rename_person(conn, new_id, label)
    return new_id


def move_faces(person: Person, selected: list[int], choices: list[Person], shown: list[int] | None = None) -> None:
    if not selected:
        st.caption("Tick the faces that are not this person (above), then choose where they go.")
        return
    destination = st.radio(f"{app.plural(len(selected), 'selected face')}:", list(DESTINATIONS),
                           format_func=DESTINATIONS.get, key=f"move_dest_{person['id']}", index=1)
    face_ids = selected
    if destination == "keep":
        face_ids = [f for f in (shown or []) if f not in set(selected)]
        if not face_ids:
            st.caption("Every face shown is selected: nothing leaves.")
            return
    target = None
    label = ""
    if destination == "new":
        label = " ".join(st.text_input("Name of the new person", key=f"move_name_{person['id']}",
                                       placeholder="optional: a name now saves a rename later").split())
        same = [c for c in choices if label and c["label"].casefold() == label.casefold()]
        if same:
            st.warning(f"«{app.md(same[0]['label'])}» exists already (#{same[0]['id']}): if it is the "
                       "same person, move the faces there instead.")
            if st.button(f"Move them to «{app.md(same[0]['label'])}»", key=f"move_to_same_{person['id']}"):
                apply(persons.move_faces, face_ids, same[0]["id"],
                      done=f"Moved the faces to «{app.md(same[0]['label'])}».")
    if destination == "other":
        others = {c["id"]: c for c in choices if c["id"] != person["id"]}
        target_id = st.selectbox(
            "Person", list(others), index=None, key=f"move_target_{person['id']}",
            placeholder="Choose a person",
            format_func=lambda i: f"{app.person_name(others[i]['label'], others[i]['hidden'])} (#{i})")
        if target_id is None:
            return
        target = brief([target_id])[target_id]
    counts = app.one(queries.dashboard_move_preview, {
        "face_ids": face_ids, "person_id": person["id"],
        "target_id": target["id"] if target else None})
    lines = []
    if counts["deleted"]:
        lines.append(f"{app.plural(counts['deleted'], 'post')} in {name(person)}'s topic "
                     f"{app.verb(counts['deleted'], 'is', 'are')} deleted (no other face of "
                     f"{name(person)} is in {app.verb(counts['deleted'], 'it', 'them')}).")
    if counts["cancelled"]:
        lines.append(f"{app.plural(counts['cancelled'], 'post')} of {name(person)} not sent yet "
                     f"{app.verb(counts['cancelled'], 'is', 'are')} cancelled.")
    if not counts["deleted"] and not counts["cancelled"]:
        lines.append(f"nothing changes in {name(person)}'s topic (its other faces keep those posts).")
    if destination == "new":
        lines.append(f"a new person is made of these faces: {app.plural(counts['new_posts'], 'media item')} "
                     f"{app.verb(counts['new_posts'], 'becomes', 'become')} due in its topic, created "
                     "with the first post.")
    elif destination == "other":
        lines.append(f"{app.plural(counts['new_posts'], 'media item')} "
                     f"{app.verb(counts['new_posts'], 'becomes', 'become')} due in {name(target)}'s topic."
                     if counts["new_posts"] else f"nothing new is posted to {name(target)}.")
    on_telegram(lines)
    notes = [f"{name(person)} never gets these faces back from the matcher."]
    if destination in ("pending", "keep"):
        notes.append("They wait in the pending pool, where the matcher may place them with someone else.")
    elif destination == "dismiss":
        notes.append("Matching ignores them from now on.")
    if counts["faces_left"] == 0:
        notes.append(f"{name(person)} is left with no face" + (
            " and is removed (it is unnamed and has no topic)."
            if not person["label_is_manual"] and person["topic_id"] is None else "; it stays, empty."))
    st.caption(" ".join(notes))
    button = f"Move {app.plural(len(face_ids), 'face')}" + (" out" if destination == "keep" else "")
    if not st.button(button, key=f"move_go_{person['id']}", type="primary"):
        return
    if destination == "new":
        apply(move_faces_to_new_person, face_ids, label,
              done=lambda new_id: f"Moved the faces to a new person (#{new_id})"
                                  + (f", «{app.md(label)}»." if label else "."))
    elif destination == "other":
        apply(persons.move_faces, face_ids, target["id"], done=f"Moved the faces to {name(target)}.")
    elif destination in ("pending", "keep"):
        apply(persons.unassign_faces, face_ids, done=f"{app.plural(len(face_ids), 'face')} left {name(person)}.")
    else:
        apply(persons.dismiss_faces, face_ids, done="The faces are dismissed.")


# --- cover -------------------------------------------------------------------------------------


def cover(person: Person, faces: list[dict[str, Any]]) -> None:
    by_id = {f["id"]: f for f in faces}
    options: list[int | None] = [None, *by_id]
    current = person["cover_face_id"] if person["cover_is_manual"] else None
    choice = st.selectbox(
        "Cover", options, index=options.index(current) if current in options else 0,
        key=f"cover_{person['id']}",
        format_func=lambda f: "Automatic: the best face" if f is None else
        f"Face #{f} · quality {by_id[f]['quality_score']:.2f}")
    if choice is not None:
        st.image(by_id[choice]["crop_jpeg"], width=120)
    if choice == current:
        st.caption("This is the cover now.")
        return
    on_telegram(["a request to update the cover post at the top of its topic is recorded."
                 if person["topic_id"] is not None else
                 "nothing yet: its topic will start with this face."])
    st.caption("The gallery shows this face; faces found later do not replace a chosen cover.")
    if st.button("Set cover", key=f"cover_go_{person['id']}", type="primary"):
        apply(persons.choose_cover, person["id"], choice, done="Cover changed.")
