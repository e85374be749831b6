"""Persons: a gallery of covers with name, faces, media and when they were first and last seen."""

from __future__ import annotations

import streamlit as st

from dashboard_pages import app
from database import queries

PER_ROW = 6
PER_PAGE = 48
SORTS = {"Most faces": "faces", "Recently found": "recent", "Name": "name"}

st.title("Persons")
app.show_flash()
left, middle, right = st.columns([3, 2, 2], vertical_alignment="bottom")
label = left.text_input("Name contains", key="gallery_filter", placeholder="Filter by name")
sort = middle.selectbox("Order", list(SORTS), key="gallery_sort")
show_hidden = right.checkbox("Show hidden persons", key="gallery_hidden")

params = {"label": label.strip(), "show_hidden": show_hidden, "sort": SORTS[sort]}
total = app.one(queries.dashboard_persons_total, params)["count"]
if total == 0:
    st.info("No person matches this filter." if label.strip() or show_hidden else
            "No persons yet: a person is created when the same face has been seen in a few photos.")
    st.stop()

persons = app.page(queries.dashboard_persons, params | {"limit": PER_PAGE}, "gallery_page")
app.pager("gallery_page", persons, PER_PAGE, total, "persons")

for start in range(0, len(persons), PER_ROW):
    for col, person in zip(st.columns(PER_ROW), persons[start:start + PER_ROW]):
        with col.container(border=True):
            if person["cover"]:
                st.image(person["cover"], width="stretch")
            app.person_link(person["id"], person["label"], person["hidden"])
            # Short lines: a tile is narrow, and a date broken over two lines is hard to read.
            # First and last seen are the dates of the messages its faces are in.
            st.caption(f"{app.plural(person['faces'], 'face')} · {person['media']} media  \n"
                       f"{person['posts']} posted  \n"
                       f"first {app.day(person['first_seen'])}  \n"
                       f"last {app.day(person['last_seen'])}")
