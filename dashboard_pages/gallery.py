"""Persons: a gallery of covers with name, faces, media and when they were first and last seen."""

from __future__ import annotations

import math

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

pages = math.ceil(total / PER_PAGE)
page = st.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1,
                       key="gallery_page") if pages > 1 else 1
persons = app.rows(queries.dashboard_persons,
                   params | {"limit": PER_PAGE, "offset": (page - 1) * PER_PAGE})
st.caption(f"{app.plural(total, 'person')}")

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
