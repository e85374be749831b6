"""“Forget this person” on the person page: erasure.py does the work, in one transaction with its
audit log entry (app.change); the operator confirms by typing the person's number first.

    erasure_ui.forget(person)     # at the end of dashboard_pages/person.py
"""

from __future__ import annotations

from typing import Any

import streamlit as st

import erasure
from dashboard_pages import app


def forget(person: dict[str, Any]) -> None:
    """The erasure section of `person`'s page: what forgetting does, a confirmation, the button."""
    person_id = person["id"]
    with st.expander("Forget this person (erasure request)", icon=":material/delete_forever:"):
        st.markdown(
            "For a request to be removed from the archive. **This cannot be undone.**\n"
            f"- Deleted at once: {app.plural(person['faces'], 'face')} (their crops and embeddings, and the "
            "small copies kept of the photos they are in), the faces in review that name this person as a candidate, its name and its merge suggestions.\n"
            f"- On Telegram, by the daemon: its {app.plural(person['posts'], 'post')} in the hub "
            f"{app.verb(person['posts'], 'is', 'are')} deleted and its topic is renamed "
            f"“{erasure.ERASED_LABEL}” and closed; posts not sent yet are cancelled.\n"
            "- Not rebuilt: the photos and videos it was in are not analysed again when seen again.\n"
            "- By hand: delete the topic in Telegram (its first message shows the face), and do not "
            "run `main.py reindex` without forgetting the person again.")
        typed = st.text_input(f"Type {person_id} to confirm", key=f"forget_confirm_{person_id}",
                              placeholder=str(person_id))
        confirmed = typed.strip() == str(person_id)
        if st.button("Forget this person", key=f"forget_go_{person_id}", type="primary", disabled=not confirmed,
                     icon=":material/delete_forever:"):
            try:
                done = app.change(erasure.forget_person, person_id, summary=lambda f: f"{f}.")
            except erasure.ErasureError as exc:
                st.error(f"Not forgotten: {app.md(exc)}")
                return
            app.flash(f"Person #{person_id} is forgotten: {app.plural(done.faces, 'face')} deleted; "
                      f"{app.plural(done.posts_withdrawn, 'post')} to delete from its topic, which the "
                      "daemon renames and closes.")
            st.query_params.pop("person", None)
            st.switch_page(app.GALLERY_PAGE)
