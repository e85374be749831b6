"""The dashboard's password gate.

The dashboard changes what is posted on Telegram, so it asks for DASHBOARD_PASSWORD and refuses
to run without one. DASHBOARD_AUTH=false turns the password off, and is accepted only when
Streamlit listens on localhost alone (`server.address`), so a dashboard reachable from other
machines always asks. The password is compared in constant time; a wrong one costs a second.
"""

from __future__ import annotations

import hmac
import logging
import time

import streamlit as st

from config import Settings

logger = logging.getLogger(__name__)

LOCAL_ADDRESSES = frozenset({"localhost", "127.0.0.1", "::1"})
WRONG_PASSWORD_DELAY = 1.0  # seconds: slows down guessing
_SIGNED_IN = "_signed_in"


def configuration_problem(settings: Settings, server_address: str | None) -> str | None:
    """Why the dashboard must not run with these settings, or None."""
    if settings.dashboard_auth:
        if settings.dashboard_password is None or not settings.dashboard_password.get_secret_value():
            return ("DASHBOARD_PASSWORD is not set, and the dashboard does not run without one. "
                    "Set it in .env (e.g. `openssl rand -base64 24`) and restart the dashboard. "
                    "For a dashboard that only this machine can reach, DASHBOARD_AUTH=false with "
                    "--server.address=127.0.0.1 turns the password off.")
        return None
    if (server_address or "").strip().strip("[]") not in LOCAL_ADDRESSES:
        shown = server_address or "all interfaces"
        return ("DASHBOARD_AUTH=false is accepted only for a dashboard that listens on localhost, "
                f"but this one listens on {shown}. Start it with --server.address=127.0.0.1, "
                "or set DASHBOARD_PASSWORD and remove DASHBOARD_AUTH=false.")
    return None


def password_matches(given: str, expected: str) -> bool:
    """Constant-time comparison (the time taken says nothing about how much was right)."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def signed_in(settings: Settings) -> bool:
    """Whether this session may see the archive (signed in, or the password is off)."""
    return not settings.dashboard_auth or bool(st.session_state.get(_SIGNED_IN))


def require_sign_in(settings: Settings) -> None:
    """Return only for a signed-in session (or when the password is off); otherwise show why
    or the sign-in form, and end the script run there."""
    problem = configuration_problem(settings, st.get_option("server.address"))
    if problem:
        st.error(problem)
        st.stop()
    if signed_in(settings):
        return
    st.title("Face Archiver")
    with st.form("sign_in", clear_on_submit=True):
        given = st.text_input("Password", type="password", key="password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        if password_matches(given, settings.dashboard_password.get_secret_value()):
            st.session_state[_SIGNED_IN] = True
            st.rerun()
        time.sleep(WRONG_PASSWORD_DELAY)
        logger.warning("dashboard: a sign-in with a wrong password")
        st.error("Wrong password.")
    st.stop()


def sign_out() -> None:
    st.session_state.pop(_SIGNED_IN, None)
