"""Face Archiver dashboard: `streamlit run dashboard.py`.

Shows what the daemon does (progress, persons, errors) and lets the operator correct persons.
It talks to PostgreSQL only, never to Telegram: corrections that must change Telegram (topic
renames, merges, deleted posts, new chats) are recorded in `dashboard_actions`, and the daemon,
which holds the Telegram clients, applies them. Each correction says what it will change on
Telegram before the operator confirms it.

Access: DASHBOARD_PASSWORD is required (see dashboard_pages/access.py). The pages live in
dashboard_pages/; .streamlit/config.toml holds Streamlit's own settings.
"""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg
import streamlit as st

import config
from dashboard_pages import access, app


FAVICON = Path(__file__).resolve().parent / "dashboard_pages" / "favicon.png"


def main() -> None:
    # The icon is a file of ours: a ":material/…:" icon makes every browser fetch it from
    # fonts.gstatic.com, telling a third party each time the operator opens the archive.
    st.set_page_config(page_title="Face Archiver", page_icon=str(FAVICON), layout="wide")

    try:
        settings = app.settings()
    except config.ConfigError as exc:
        st.error("The configuration has problems; fix them in .env (or the environment) and restart "
                 "the dashboard:\n\n" + "\n".join(f"- {problem}" for problem in exc.problems))
        st.stop()

    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The pages are declared before the sign-in (hidden until then) so that an address such as
    # /person?person=12 (a bookmark, a shared link) still opens that page once signed in; none of
    # them runs before.
    page = st.navigation({
        "Monitor": [
            st.Page(app.OVERVIEW_PAGE, title="Overview", icon=":material/monitoring:", default=True),
            st.Page(app.CHATS_PAGE, title="Chats", icon=":material/forum:"),
            st.Page(app.ERRORS_PAGE, title="Errors", icon=":material/error:"),
            st.Page(app.AUDIT_PAGE, title="Audit log", icon=":material/history:"),
        ],
        "Persons": [
            st.Page(app.GALLERY_PAGE, title="Persons", icon=":material/groups:"),
            st.Page(app.PERSON_PAGE, title="Person", icon=":material/person:"),
            st.Page(app.REVIEW_PAGE, title="Review", icon=":material/rule:"),
            st.Page(app.SEARCH_PAGE, title="Search by photo", icon=":material/image_search:"),
        ],
    }, position="sidebar" if access.signed_in(settings) else "hidden")
    access.require_sign_in(settings)
    app.connect()
    if settings.dashboard_auth and st.sidebar.button("Sign out", icon=":material/logout:"):
        access.sign_out()
        st.rerun()
    try:
        page.run()
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        # The database went away (restart, network): the pool reconnects on the next run.
        st.error(f"The database is not reachable right now ({str(exc).strip() or type(exc).__name__}). "
                 "Reload the page in a moment.")


# Streamlit runs this file as __main__. A process started with multiprocessing's "spawn" from a
# process whose __main__ is this file runs it again as __mp_main__: it must not start a dashboard
# (and an embedded database) of its own.
if __name__ == "__main__":
    main()
