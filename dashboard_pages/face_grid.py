"""A person's faces as one grid of pictures that the operator selects by clicking them.

A click on a face selects it (or unselects it); dragging over faces, or a click then a
shift-click, selects every face in that box. With "Range" on, two clicks select a run of faces
in reading order (the grid's order, best first): the first click marks where it starts, the
second where it ends, and every face between them is selected (a box cannot say that: the grid
reports a box's cells, not which corner the gesture started from). The selection is kept in
the same session keys the tiles' checkboxes use (`face_key`), so the two views, select all / invert and the actions
next to the faces all see one selection. Selected faces are drawn with a frame.

The grid is an `st.dataframe` of picture cells with cell selection: one rerun per gesture,
however many faces it selects (a page of 96 checkboxes cost one rerun per face).
"""

from __future__ import annotations

import base64
import io
from typing import Any

import pandas as pd
import streamlit as st
from PIL import Image, ImageOps

FRAME = (255, 75, 75)   # Streamlit's primary red
ROW_HEIGHT = 96


def face_key(person_id: int, face_id: int) -> str:
    """The session key that says whether a face of this person's page is selected."""
    return f"face_{person_id}_{face_id}"


def range_key(person_id: int) -> str:
    """The session key of the "Range" toggle of this person's grid."""
    return f"face_range_{person_id}"


def _anchor_key(person_id: int) -> str:
    return f"face_range_from_{person_id}"


def selected(person_id: int, face_ids: list[int]) -> list[int]:
    return [f for f in face_ids if st.session_state.get(face_key(person_id, f))]


@st.cache_data(show_spinner=False, max_entries=4096)
def _picture(crop: bytes, framed: bool) -> str:
    """A face crop as a data: URL (a picture cell), framed when selected."""
    if framed:
        image = ImageOps.expand(Image.open(io.BytesIO(crop)).convert("RGB").resize((112, 112)),
                                border=10, fill=FRAME)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=85)
        crop = out.getvalue()
    return "data:image/jpeg;base64," + base64.b64encode(crop).decode("ascii")


def _apply(person_id: int, faces: list[dict[str, Any]], per_row: int, cells: list) -> None:
    """What a gesture on the grid selects: one cell toggles its face (with "Range" on: marks the
    start of a run, or selects the run from there), a box selects its faces."""
    picked = [faces[r * per_row + int(c) - 1]["id"] for r, c in cells
              if 0 <= r * per_row + int(c) - 1 < len(faces)]
    ids = [f["id"] for f in faces]
    anchor = st.session_state.get(_anchor_key(person_id))
    if len(picked) == 1 and st.session_state.get(range_key(person_id)):
        if anchor in ids:   # the second click: everything from the first one to here
            start, end = sorted((ids.index(anchor), ids.index(picked[0])))
            for face_id in ids[start:end + 1]:
                st.session_state[face_key(person_id, face_id)] = True
            st.session_state[_anchor_key(person_id)] = None
        else:
            st.session_state[face_key(person_id, picked[0])] = True
            st.session_state[_anchor_key(person_id)] = picked[0]
    elif len(picked) == 1:
        key = face_key(person_id, picked[0])
        st.session_state[key] = not st.session_state.get(key)
    else:
        for face_id in picked:
            st.session_state[face_key(person_id, face_id)] = True


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def grid(person_id: int, faces: list[dict[str, Any]], per_row: int) -> None:
    """The clickable grid of `faces` (best first, in rows of `per_row`)."""
    generation = f"face_grid_gen_{person_id}"
    key = f"face_grid_{person_id}_{st.session_state.get(generation, 0)}"
    state = st.session_state.get(key)
    cells = list(state["selection"]["cells"]) if state else []
    if cells:
        # The gesture is applied here, and the grid drawn anew (a new key: no box left on it).
        _apply(person_id, faces, per_row, cells)
        st.session_state[generation] = st.session_state.get(generation, 0) + 1
        key = f"face_grid_{person_id}_{st.session_state[generation]}"
    if st.session_state.get(range_key(person_id)):
        anchor = st.session_state.get(_anchor_key(person_id))
        ids = [f["id"] for f in faces]
        st.caption(f"Range from the {_ordinal(ids.index(anchor) + 1)} face (#{anchor}): click the last face."
                   if anchor in ids else "Range: click the first face of the run, then the last.")
    else:
        st.session_state[_anchor_key(person_id)] = None
    for face in faces:   # kept while the tiles' checkboxes are not drawn
        st.session_state[face_key(person_id, face["id"])] = bool(
            st.session_state.get(face_key(person_id, face["id"])))
    rows = []
    for start in range(0, len(faces), per_row):
        row = {str(i + 1): _picture(bytes(f["crop_jpeg"]), bool(st.session_state[face_key(person_id, f["id"])]))
               for i, f in enumerate(faces[start:start + per_row])}
        rows.append(row)
    columns = [str(i + 1) for i in range(per_row)]
    st.dataframe(pd.DataFrame(rows, columns=columns), key=key, on_select="rerun", selection_mode="multi-cell",
                 hide_index=True, row_height=ROW_HEIGHT, height=min(ROW_HEIGHT * len(rows) + 40, 640),
                 column_config={c: st.column_config.ImageColumn(c, width="small") for c in columns},
                 width="stretch")
