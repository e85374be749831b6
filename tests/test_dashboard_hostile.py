"""Nothing a stranger wrote is rendered: chat titles (anyone who runs a chat chooses them), file
names in error messages, account names and person labels reach every page and every action's
preview, button, caption and flash message, and each stays literal text.

A hostile name carries a link, emphasis, a colour and HTML. Every element whose text Streamlit
reads as Markdown (titles, captions, alerts, button, checkbox and radio labels, tabs, expanders,
page links) is checked after every step for the raw forms; tables, code and JSON show text as
it is and are not. The browser test checks the rendered page itself (no link to the stranger's
address anywhere).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from conftest import FACES_DIR
from test_dashboard import pick, biden, db, faces_of, persons, signed_in  # noqa: F401
from test_dashboard_support import FAMILY, filled_db, filled_template  # noqa: F401

LINK = "[news](https://example.com)"
HOSTILE = f"x {LINK} **bold** :red[alarm] <b>tag</b>"
RAW = (LINK, "**bold**", ":red[alarm]", "<b>")
PLAIN = {"dataframe", "arrow_data_frame", "json", "code", "selectbox", "multiselect", "text_input",
         "image", "imgs", "plotly_chart", "file_uploader", "number_input"}


def strings(message) -> list[str]:
    """Every string field of a protobuf message (options and labels of nested messages too)."""
    found = []
    for field, value in message.ListFields():
        values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        for v in values:
            if isinstance(v, str):
                found.append(v)
            elif hasattr(v, "ListFields") and field.name not in ("children",):
                found.extend(strings(v))
    return found


def rendered(at) -> list[str]:
    """The Markdown-read text of every element and block on the page, as sent to the browser."""
    texts = []
    for root in (at.main, at.sidebar):
        for node in root:
            if getattr(node, "type", None) in PLAIN or getattr(node, "proto", None) is None:
                continue
            proto = node.proto
            if hasattr(node, "children"):   # a block: its own label (tab, expander), not its children
                texts.extend(s for f, v in proto.ListFields() if f.name in ("expandable", "tab")
                             for s in strings(v))
            else:
                texts.extend(strings(proto))
    return texts


def leaks(text: str) -> bool:
    """Raw Markdown or HTML of the hostile name, or its address where Markdown would make a
    link of it even escaped (GFM autolinks bare addresses in the text)."""
    return any(raw in text for raw in RAW) or "://example.com" in text.replace("\\", "")


def nothing_rendered(at, where: str) -> None:
    assert not at.exception, [e.value for e in at.exception]
    found = [t for t in rendered(at) if leaks(t)]
    assert not found, f"{where}: a stranger's Markdown reaches the page: {found[:3]}"


@pytest.fixture
def hostile(db):  # noqa: F811
    """Every name a stranger (or a careless typist) could choose is hostile."""
    db.execute("UPDATE telegram_topics SET label = %s || ' ' || id, topic_title = %s || ' topic'", (HOSTILE, HOSTILE))
    db.execute("UPDATE scan_checkpoints SET chat_title = %s || ' ' || id", (HOSTILE,))
    db.execute("UPDATE telegram_accounts SET display_name = %s", (HOSTILE,))
    db.execute("UPDATE processing_errors SET error_message = error_message || %s", (f" in {HOSTILE}.jpg",))
    return db


def test_every_page_shows_hostile_names_as_text(hostile):
    for page in ("overview", "chats", "errors", "audit_log", "gallery", "review", "search", "person"):
        at = signed_in(page)
        nothing_rendered(at, page)
    at = signed_in("person", person=str(biden(hostile)))
    nothing_rendered(at, "a person's page")
    # The escaped name is still the name (what the operator sees is the hostile text, literally).
    assert at.title[0].value.startswith("x \\[news\\](https\\:\u2060//example.com) \\*\\*bold\\*\\*")


def test_every_action_shows_hostile_names_as_text(hostile):
    db = hostile
    by_label = persons(db)
    person = biden(db)
    others = sorted(i for i in by_label.values() if i != person)
    at = signed_in("person", person=str(person))

    # Rename: the preview names the topic's current title and the new name; the button too.
    db.execute("UPDATE telegram_topics SET topic_id = 77 WHERE id = %s", (person,))
    at.run()
    at.text_input(key=f"rename_{person}").input(f"{HOSTILE} renamed").run()
    nothing_rendered(at, "rename preview")
    at.button(key=f"rename_{person}_go").click().run()
    nothing_rendered(at, "after the rename")
    assert at.success, "the rename did not happen"

    # Move a face to another person: preview, button, flash.
    face = faces_of(db, person)[-1]
    pick(at, db, person, face)
    at.radio(key=f"move_dest_{person}").set_value("other").run()
    at.selectbox(key=f"move_target_{person}").select(others[0]).run()
    nothing_rendered(at, "move preview")
    at.button(key=f"move_go_{person}").click().run()
    nothing_rendered(at, "after the move")
    assert at.success

    # Merge: the choice of who stays (radio), the preview, the button, the flash.
    at.selectbox(key=f"merge_other_{person}").select(others[0]).run()
    nothing_rendered(at, "merge preview")
    at.button(key=f"merge_go_{person}").click().run()
    nothing_rendered(at, "after the merge")
    assert at.success

    # Hide and unhide: preview and flash.
    survivor = int(at.query_params["person"][0] if isinstance(at.query_params["person"], list)
                   else at.query_params["person"])
    at.button(key=f"hide_{survivor}").click().run()
    nothing_rendered(at, "after hiding")
    at.button(key=f"unhide_{survivor}").click().run()
    nothing_rendered(at, "after unhiding")

    # Chats: pausing names the chat in its flash.
    at = signed_in("chats")
    family = db.execute("SELECT id FROM scan_checkpoints WHERE chat_id = %s", (FAMILY,)).fetchone()[0]
    at.selectbox(key="pause_chat").select(family).run()
    at.button(key="pause_resume").click().run()
    nothing_rendered(at, "after pausing a chat")
    assert at.success


def test_review_actions_show_hostile_names_as_text(hostile):
    db = hostile
    [(suggestion,)] = db.execute("SELECT id FROM merge_suggestions WHERE status = 'open'").fetchall()
    at = signed_in("review")
    nothing_rendered(at, "review")
    at.button(key=f"suggestion_reject_{suggestion}").click().run()
    nothing_rendered(at, "after rejecting a suggestion")
    [(face,)] = db.execute("SELECT id FROM face_embeddings WHERE state = 'review'").fetchall()
    [button] = [b for b in at.button if (b.key or "").startswith(f"review_{face}_")][:1]
    button.click().run()
    nothing_rendered(at, "after deciding a face")
    assert at.success


def test_search_results_show_hostile_names_as_text(hostile):
    at = signed_in("search")
    photo = FACES_DIR / "group_obama_biden_composite.jpg"
    at.file_uploader[0].set_value((photo.name, photo.read_bytes(), "image/jpeg")).run()
    nothing_rendered(at, "search results")
    assert at.page_link
