"""Review: "maybe the same person" suggestions (merge or not), "maybe two people" (split or not),
faces the matcher could not decide between persons (choose one, anyone else by name, a new
person, or nobody), and re-deciding every automatic assignment (recluster.py). Each side shows
a few of its faces, and a face in review its whole photo."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

import persons
import purity
from dashboard_pages import app, corrections
from dashboard_pages.corrections import brief, name, on_telegram
from database import queries

SHOWN = 20
MORE_FACES = 3                     # faces of each side besides its cover
PHOTO_MAX_BYTES = 20 * 1024 * 1024

st.title("Review")
app.show_flash()


def reject_suggestions(conn, suggestion_ids: list[int]) -> None:
    """Several "different people" answers at once, in one transaction."""
    for suggestion_id in suggestion_ids:
        persons.reject_merge_suggestion(conn, suggestion_id)


def more_faces(person_ids: list[int]) -> dict[int, list[bytes]]:
    """{person: a few of its best faces besides the cover}: one face is a poor likeness to judge."""
    found: dict[int, list[bytes]] = {}
    for r in app.rows(queries.review_person_faces, {"person_ids": person_ids, "per_person": MORE_FACES}):
        found.setdefault(r["person_id"], []).append(r["crop_jpeg"])
    return found


def person_tile(column, person: dict, caption: str = "", faces: list[bytes] | None = None) -> None:
    with column:
        if person["cover"]:
            st.image(person["cover"], width=120)
        if faces:
            for small, crop in zip(st.columns(MORE_FACES), faces):
                small.image(crop, width="stretch")
        app.person_link(person["id"], person["label"], person["hidden"])
        st.caption(f"{app.plural(person['faces'], 'face')}" + (f" · {caption}" if caption else ""))


def whole_photo(face_id: int) -> None:
    """The photo a face in review was found in; where the file is gone (a download is removed
    once analysed), the small copy kept at analysis (media_previews); and the other faces in it."""
    photo = app.one(queries.review_photo, {"face_id": face_id})
    if photo is None:
        return
    path = Path(photo["path"]) if photo["path"] else None
    with st.expander("Whole photo"):
        if photo["media_type"] in ("photo", "image") and path is not None and path.is_file() \
                and path.stat().st_size <= PHOTO_MAX_BYTES:
            st.image(str(path), width="stretch")
        elif photo["preview"]:
            st.image(bytes(photo["preview"]), width="stretch")
            st.caption("A small copy kept when it was analysed (the file is not kept).")
        else:
            st.caption("The file is not kept on this machine: open the message to see it whole.")
        if photo["other_faces"]:
            st.caption(f"{app.plural(len(photo['other_faces']), 'other face')} in it:")
            for small, crop in zip(st.columns(4), photo["other_faces"][:4]):
                small.image(crop, width="stretch")


def crops(column, images: list) -> None:
    shown = [c for c in images if c]
    if shown:
        column.image(shown, width=80)


# --- maybe the same person ---------------------------------------------------------------------
st.subheader("Maybe the same person")
suggestions = app.rows(queries.dashboard_merge_suggestions, {"limit": SHOWN})
open_total = app.one(queries.dashboard_counts)["suggestions_open"]
if not suggestions:
    st.caption("No suggestions. Persons whose faces come close are offered here, never merged silently.")
else:
    left, right = st.columns([3, 2], vertical_alignment="center")
    left.caption(f"{len(suggestions)} of {open_total}, most faces agreeing first.")
    if right.button(f"Different people: all {len(suggestions)} shown", key="suggestions_reject_all"):
        corrections.apply(reject_suggestions, [s["id"] for s in suggestions],
                          done=f"Noted: the {app.plural(len(suggestions), 'pair')} shown are different "
                               "people; they are not offered again.")
pairs = brief(sorted({p for s in suggestions for p in (s["person_a"], s["person_b"])}))
pair_faces = more_faces(sorted({p["id"] for p in pairs.values()})) if pairs else {}
for s in suggestions:
    a, b = pairs.get(s["person_a"]), pairs.get(s["person_b"])
    if a is None or b is None or a["id"] == b["id"]:
        continue
    with st.container(border=True):
        left, right, decide = st.columns([1, 1, 4])
        person_tile(left, a, faces=pair_faces.get(a["id"]))
        person_tile(right, b, faces=pair_faces.get(b["id"]))
        with decide:
            if s["agreeing"] is not None:
                st.markdown(f"**{s['agreeing']} of their {s['faces']} faces** agree with the other "
                            f"person as a whole (average similarity of the two: {s['score']:.3f})")
            else:
                st.markdown(f"Similarity of their closest faces: **{s['score']:.3f}**")
            pair = {a["id"]: a, b["id"]: b}
            keep = st.radio("Keep", list(pair), index=list(pair).index(corrections.default_survivor(a, b)),
                            horizontal=True, key=f"suggestion_keep_{s['id']}",
                            format_func=lambda i, pair=pair: app.md(pair[i]["label"]))
            survivor, absorbed = (a, b) if keep == a["id"] else (b, a)
            on_telegram(corrections.merge_effects(survivor, absorbed))
            same, different = st.columns(2)
            if same.button("Same person: merge", key=f"suggestion_merge_{s['id']}", type="primary"):
                corrections.apply(corrections.merge_persons, survivor["id"], absorbed["id"], s["id"],
                                  done=f"Merged {name(absorbed)} into {name(survivor)}.")
            if different.button("Different people", key=f"suggestion_reject_{s['id']}"):
                corrections.apply(persons.reject_merge_suggestion, s["id"],
                                  done=f"Noted: {name(a)} and {name(b)} are different people; "
                                       "they are not offered again.")

# --- maybe two people (purity.py) -------------------------------------------------------------------
st.subheader("Maybe two people")
splits = app.rows(queries.dashboard_split_suggestions, {"limit": SHOWN})
if not splits:
    st.caption("No person to split. A person whose faces form two groups that do not look alike "
               "as wholes is offered here, never split silently.")
for s in splits:
    with st.container(border=True):
        label = app.person_name(s["label"], s["hidden"])
        st.markdown(f"{app.md(label)} (#{s['person_id']}): {app.plural(len(s['face_ids']), 'face')} "
                    f"of {s['person_faces']} look like someone else (the two groups' average "
                    f"similarity {s['score']:.3f})")
        kept, split = st.columns(2)
        kept.caption("Stay")
        crops(kept, s["kept_crops"])
        split.caption("Would become a new person")
        crops(split, s["split_crops"])
        on_telegram([f"their posts are deleted from {app.md(label)}'s topic (where no other face of it is in the photo) and posted "
                     "in the new person's topic, created with its first post.",
                     "“One person” changes nothing."])
        yes, no = st.columns(2)
        if yes.button("Two people: split", key=f"split_go_{s['id']}", type="primary"):
            corrections.apply(purity.accept_split_suggestion, s["id"],
                              done=lambda new_id: f"Split: the faces are a new person (#{new_id}).")
        if no.button("One person", key=f"split_reject_{s['id']}"):
            corrections.apply(purity.reject_split_suggestion, s["id"],
                              done="Noted: one person; not offered again until it has grown by half.")

# --- faces to decide ---------------------------------------------------------------------------
st.subheader("Faces to decide")
total = app.one(queries.dashboard_review_total)["count"]
faces = app.page(queries.dashboard_review_faces, {"limit": SHOWN}, "review_page")
app.pager("review_page", faces, SHOWN, total, "faces, oldest first")
if not faces:
    st.caption("No faces to decide. A face that looks like two persons almost equally waits here "
               "instead of being guessed.")
candidates = brief(sorted({c["person_id"] for f in faces for c in (f["review_candidates"] or [])}))
candidate_faces = more_faces(sorted({p["id"] for p in candidates.values()})) if candidates else {}
everyone = app.rows(queries.dashboard_person_choices) if faces else []
for face in faces:
    options: dict[int, dict] = {}
    similarity: dict[int, float] = {}
    for c in face["review_candidates"] or []:
        now = candidates.get(c["person_id"])
        if now is not None:  # followed through merges; the best similarity per person
            options[now["id"]] = now
            similarity[now["id"]] = max(similarity.get(now["id"], 0.0), c["similarity"])
    with st.container(border=True):
        columns = st.columns([1] + [1] * max(len(options), 1) + [2])
        with columns[0]:
            st.image(face["crop_jpeg"], width=120)
            link = app.message_link(face["source_chat_id"], face["source_message_id"], face["chat_username"])
            source = app.source_text(face["chat_title"], face["source_chat_id"], face["source_message_id"])
            st.caption((f"[{source}]({link})" if link else source)
                       + (f"  \n{len(face['unit_ids'])} faces of one video track" if len(face["unit_ids"]) > 1 else ""))
            whole_photo(face["id"])
        for column, person in zip(columns[1:], options.values()):
            person_tile(column, person, f"similarity {similarity[person['id']]:.3f}",
                        faces=candidate_faces.get(person["id"]))
            if column.button(f"It's {app.md(person['label'])}", key=f"review_{face['id']}_{person['id']}"):
                corrections.apply(persons.resolve_review, face["id"], person["id"],
                                  done=f"The face is {name(person)}'s.")
        with columns[-1]:
            anyone = {c["id"]: c for c in everyone}
            chosen = st.selectbox("Someone else", list(anyone), index=None, key=f"review_other_{face['id']}",
                                  placeholder="Type a name", format_func=lambda i, a=anyone: (
                                      f"{app.person_name(a[i]['label'], a[i]['hidden'])} (#{i})"))
            if chosen is not None and st.button(f"It's {app.md(anyone[chosen]['label'])}",
                                                key=f"review_other_go_{face['id']}"):
                # Any person, not only the matcher's candidates (with the video track's other faces).
                corrections.apply(persons.resolve_review, face["id"], chosen,
                                  done=f"The face is «{app.md(anyone[chosen]['label'])}»'s.")
            on_telegram(["choosing a person posts this media item in their topic (unless they are "
                         "hidden or have it already).",
                         "a new person gets its topic with its first post; “nobody” posts nothing."])
            if st.button("A new person", key=f"review_new_{face['id']}"):
                corrections.apply(persons.move_faces_to_new_person, face["unit_ids"],
                                  done=lambda new_id: f"Made a new person (#{new_id}) of the face.")
            if st.button("Nobody to follow", key=f"review_dismiss_{face['id']}"):
                corrections.apply(persons.resolve_review, face["id"], None, done="The face is dismissed.")

# --- re-decide automatic assignments (recluster.py) ----------------------------------------------
st.subheader("Re-decide automatic assignments")
st.caption("Every face the matcher placed by itself, and the pending pool, decided again with today's "
           "rules, as `main.py recluster` does: persons that are two people come apart. Your "
           "corrections stay as they are (names, merges, faces you placed, covers, hidden persons, "
           "faces in review, “not this person”).")


def recluster_persons(conn, dry_run: bool = False):
    """recluster.recluster with the daemon's rules (the audit log names this function)."""
    import recluster
    from identity_matcher import MatchParams

    return recluster.recluster(conn, MatchParams.from_settings(app.settings()), dry_run=dry_run)


preview, go = st.columns(2)
if preview.button("Show what would change", key="recluster_preview"):
    with app.pool().connection(timeout=app.DB_WAIT) as conn:
        st.session_state["recluster_report"] = str(recluster_persons(conn, dry_run=True))
if "recluster_report" in st.session_state:
    st.code(st.session_state["recluster_report"], language=None)
    on_telegram(["posts of photos that leave a person are deleted from its topic (unsent ones "
                 "cancelled); they are posted in the topic of the person they join (new persons get "
                 "a topic); nothing is posted twice."])
    sure = go.checkbox("I have read what changes", key="recluster_confirm")
    if sure and go.button("Re-decide now", key="recluster_go", type="primary"):
        st.session_state.pop("recluster_report", None)
        corrections.apply(recluster_persons, done=lambda report: (
            f"Re-decided {report.faces} faces: {report.moved} moved, {report.left} out to the pending "
            f"pool, {report.joined} joined a person; {len(report.created)} new persons."))
