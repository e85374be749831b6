"""A person: their faces (selected by clicking them, moved with the form next to them), their
media, and the corrections (rename, merge, cover, hide).

The person is the query parameter `person` (the gallery links here with it)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import persons
from dashboard_pages import app, corrections, face_grid, split
from database import queries

FACES_PER_ROW = 8
FACES_SHOWN = 96
MEDIA_SHOWN = 200

app.show_flash()
choices = app.rows(queries.dashboard_person_choices)


def pick_person() -> None:
    st.title("Person")
    if not choices:
        st.info("No persons yet.")
        st.stop()
    by_id = {c["id"]: c for c in choices}
    chosen = st.selectbox("Person", list(by_id), index=None, placeholder="Choose a person",
                          format_func=lambda i: f"{app.person_name(by_id[i]['label'], by_id[i]['hidden'])} (#{i})")
    if chosen is not None:
        st.query_params["person"] = str(chosen)
        st.rerun()
    st.stop()


raw = st.query_params.get("person", "")
if not raw.isdigit():
    pick_person()
person_id = int(raw)
person = app.one(queries.dashboard_person, {"person_id": person_id})
if person is None:
    st.title("Person")
    st.warning(f"There is no person #{person_id} (a person left with no face is removed).")
    st.page_link(app.GALLERY_PAGE, label="All persons", icon=":material/groups:")
    st.stop()
if person["merged_into"] is not None:
    st.title(app.md(person["label"]))
    st.info(f"Merged into «{app.md(person['merged_into_label'])}»: its faces and posts are there now.")
    app.person_link(person["merged_into"], person["merged_into_label"], icon=":material/person:")
    st.stop()

# --- who ---------------------------------------------------------------------------------------
picture, about = st.columns([1, 5])
if person["cover"]:
    picture.image(person["cover"], width="stretch")
about.title(app.md(app.person_name(person["label"], person["hidden"])))
topic = app.topic_link(app.hub_of(person), person["topic_id"])
facts = [
    "named by you" if person["label_is_manual"] else "not named yet",
    (f"[topic]({topic})" if topic else f"topic {person['topic_id']}") if person["topic_id"] is not None
    else "no topic yet (created when its first post is due)",
    f"{app.plural(person['faces'], 'face')} in {app.plural(person['media'], 'media item')}"
    + (f" ({person['media_listed']} with its posts)" if person["media_listed"] != person["media"] else ""),
    f"{person['posts']} posted, {person['posts_due']} waiting",
    f"first seen {app.when(person['first_seen'])}, last seen {app.when(person['last_seen'])}",
]
about.markdown(" · ".join(facts))

# --- faces -------------------------------------------------------------------------------------
st.subheader("Faces")
faces = app.page(queries.dashboard_person_faces, {"person_id": person_id, "limit": FACES_SHOWN},
                 f"faces_page_{person_id}")
app.pager(f"faces_page_{person_id}", faces, FACES_SHOWN, person["faces"], "faces, best first")


def tiles() -> None:
    """The faces as tiles, with a checkbox, "set as cover" and where each was seen."""
    for start in range(0, len(faces), FACES_PER_ROW):
        for col, face in zip(st.columns(FACES_PER_ROW), faces[start:start + FACES_PER_ROW]):
            with col:
                st.image(face["crop_jpeg"], width="stretch")
                is_cover = face["id"] == person["cover_face_id"]
                tick, star = st.columns([3, 1], vertical_alignment="center")
                tick.checkbox(f"#{face['id']}{' ★' if is_cover else ''}", key=face_key(face["id"]))
                if not is_cover and star.button("☆", key=f"cover_face_{face['id']}", help="Set as cover",
                                                type="tertiary"):
                    corrections.apply(persons.choose_cover, person_id, face["id"], done="Cover changed.")
                link = app.message_link(face["source_chat_id"], face["source_message_id"], face["chat_username"])
                source = app.source_text(face["chat_title"], face["source_chat_id"], face["source_message_id"])
                if face["frame_time"] is not None:
                    source += f" at {face['frame_time']:.1f} s"
                scores = f"quality {face['quality_score']:.2f}" + (
                    f" · match {face['match_similarity']:.2f}" if face["match_similarity"] else "")
                st.caption(f"{scores}  \n" + (f"[{source}]({link})" if link else source))


def face_key(face_id: int) -> str:
    return face_grid.face_key(person_id, face_id)


def select(face_ids: list[int], value: bool) -> None:
    """Select (or unselect) these faces: a callback, so it runs before they are drawn."""
    for face_id in face_ids:
        st.session_state[face_key(face_id)] = value


VIEWS = {"grid": "Click to select", "tiles": "Details"}
if not faces:
    st.caption("No faces left.")
else:
    ids = [f["id"] for f in faces]
    ticked = any(st.session_state.get(face_key(i)) for i in ids)
    bar = st.columns([2, 1, 1, 1, 1, 3], vertical_alignment="center")
    view = bar[0].segmented_control("View", list(VIEWS), format_func=VIEWS.get, default="grid",
                                    key=f"faces_view_{person_id}", label_visibility="collapsed") or "grid"
    bar[1].button("Select all", key=f"select_all_{person_id}", on_click=select, args=(ids, True))
    bar[2].button("Select none", key=f"select_none_{person_id}", on_click=select, args=(ids, False),
                  disabled=not ticked)
    bar[3].button("Invert", key=f"select_invert_{person_id}", on_click=lambda: [
        select([i], not st.session_state.get(face_key(i))) for i in ids])
    count = bar[5].empty()   # filled once the grid has applied the latest click
    if view == "grid":
        bar[4].toggle("Range", key=face_grid.range_key(person_id),
                      help="Click the first face of a run, then the last: every face between them "
                           "(in reading order, as the faces are ranked) is selected.")
        st.caption("Click the faces that are not this person (or the ones that are, and “keep only "
                   "the selected”); drag over faces, or click one and shift-click another, to select "
                   "the box between them; with “Range” on, click a first and a last face to select "
                   "every face between them in reading order. Then say where they go, right below.")
        face_grid.grid(person_id, faces, FACES_PER_ROW)
    else:
        tiles()
selected = face_grid.selected(person_id, [f["id"] for f in faces])
if faces:
    count.caption(f"{len(selected)} of {len(faces)} selected")

# --- what happens to the selected faces, next to them ----------------------------------------
if faces:
    with st.container(border=True):
        if len(selected) == 1 and selected[0] != person["cover_face_id"]:
            if st.button("Set the selected face as cover", key=f"cover_selected_{person_id}",
                         icon=":material/star:"):
                corrections.apply(persons.choose_cover, person_id, selected[0], done="Cover changed.")
        corrections.move_faces(person, selected, choices, shown=[f["id"] for f in faces])
    split.offer(person)

# --- media -------------------------------------------------------------------------------------
st.subheader("Media")
media = app.page(queries.dashboard_person_media, {"person_id": person_id, "limit": MEDIA_SHOWN},
                 f"media_page_{person_id}")
hub = app.hub_of(person)
if media:
    st.caption("Every media item with a face of this person or a post in its topic, newest first.")
    app.pager(f"media_page_{person_id}", media, MEDIA_SHOWN, person["media_listed"], "media items")
    st.dataframe(pd.DataFrame([{
        "Date": app.local(m["message_date"]),
        "Type": m["media_type"],
        "Source": app.source_text(m["chat_title"], m["source_chat_id"], m["source_message_id"], markdown=False),
        # "" rather than None: a link column shows an empty cell for it, not the word None.
        "Source link": app.message_link(m["source_chat_id"], m["source_message_id"], m["chat_username"]) or "",
        "Faces": m["faces"],
        "Post": m["post_status"] or "—",
        "Post link": (app.topic_link(hub, person["topic_id"], m["uploaded_message_id"]) or ""
                      if m["post_status"] == "posted" else ""),
    } for m in media]), hide_index=True, width="stretch", column_config={
        "Date": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
        "Source link": st.column_config.LinkColumn(display_text="open"),
        "Post link": st.column_config.LinkColumn(display_text="open in hub"),
    })
else:
    st.caption("No media.")

# --- corrections -------------------------------------------------------------------------------
st.subheader("Corrections")
# A keyed tab set keeps the open tab across reruns: without it, any change above it (the flash
# message gone, a face fewer) reopened "Rename" under the operator's hand, e.g. right after they
# chose whom to merge with. Its labels must not change either (hence "Hide / unhide").
rename, merge, cover, hide = st.tabs(
    ["Rename", "Merge", "Cover", "Hide / unhide"], key=f"corrections_{person_id}",
    on_change="rerun")
with rename:
    corrections.rename(person)
with merge:
    corrections.merge(person, choices)
with cover:
    corrections.cover(person, faces)
with hide:
    corrections.hide(person)

# --- erasure (dashboard_pages/erasure_ui.py) ---------------------------------------------------
from dashboard_pages import erasure_ui  # noqa: E402  (kept with its one call: a self-contained section)

erasure_ui.forget(person)
