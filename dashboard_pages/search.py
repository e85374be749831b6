"""Search by photo: the faces in an uploaded photo and the persons nearest to each."""

from __future__ import annotations

import streamlit as st

from dashboard_pages import app
from dashboard_pages.corrections import brief
from database import queries
from identity_matcher import MatchParams
from media_processor import MediaError, ModelUnavailableError

st.title("Search by photo")
engine = app.one(queries.dashboard_engine)
if engine is None:
    st.info("No faces are stored yet, so there is nobody to find.")
    st.stop()

upload = st.file_uploader("Photo", type=["jpg", "jpeg", "png", "webp"],
                          help="Nothing is stored: the photo is only compared with the stored faces.")
if upload is None:
    st.caption("Upload a photo to see each face in it and the persons it looks like.")
    st.stop()

try:
    with st.spinner("Finding faces…"):
        faces = app.face_processor(engine["engine"]).detect(upload.getvalue(), name=upload.name)
except MediaError as exc:
    st.error(f"This file cannot be read as a photo: {exc}")
    st.stop()
except ModelUnavailableError as exc:
    st.error(f"The face model ({engine['engine']}) is not available here: {exc}")
    st.stop()
if not faces:
    st.warning("No face found in this photo.")
    st.stop()

settings = app.settings()
threshold = MatchParams.for_engine(
    engine["engine"],
    similarity_threshold=settings.similarity_threshold if settings.face_engine == engine["engine"] else None,
).similarity_threshold
st.caption(f"{app.plural(len(faces), 'face')} found ({engine['engine']} engine). A face joins a person "
           f"from a similarity of {threshold:.2f} (and only if most of its nearest faces agree).")

for number, face in enumerate(faces, start=1):
    nearest = app.nearest_persons(face.embedding)
    people = brief([n["person_id"] for n in nearest])
    with st.container(border=True, key=f"search_face_{number}"):
        columns = st.columns(6)
        columns[0].image(face.crop_jpeg, width=120)
        columns[0].caption(f"Face {number} · quality {face.quality:.2f}")
        if not nearest:
            columns[1].caption("Nobody stored looks like this face.")
        for column, match in zip(columns[1:], nearest):
            person = people[match["person_id"]]
            with column:
                if person["cover"]:
                    st.image(person["cover"], width=120)
                app.person_link(person["id"], person["label"], person["hidden"])
                verdict = "likely" if match["similarity"] >= threshold else "below the threshold"
                st.caption(f"similarity {match['similarity']:.3f} · {verdict}")
