"""Overview: totals, work over time (processing_metrics), the queue, the accounts, and the
Telegram changes waiting for the daemon."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import plotly.express as px
import streamlit as st

from commands import python_command
from dashboard_pages import app
from dashboard_pages.actions import describe_action
from database import queries

# Counters are summed per time bucket; gauges (a level at a moment) take their peak.
WORK_METRICS = {"jobs_done": "media done", "faces_found": "faces found",
                "persons_created": "persons created", "jobs_failed": "failed",
                "jobs_skipped": "skipped", "media_downloaded": "downloaded"}
QUEUE_GAUGES = {"queue_queued": "to download", "queue_staged": "to analyse"}
BUCKET_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
PERIODS = {"Last hour": (1, "minute"), "Last 6 hours": (6, "minute"), "Last 24 hours": (24, "hour"),
           "Last 7 days": (24 * 7, "hour"), "Last 30 days": (24 * 30, "day")}
ALIVE_SECONDS = 150   # the workers report every minute: two reports missed means not running

st.title("Overview")
app.show_flash()
counts = app.one(queries.dashboard_counts)
accounts = app.rows(queries.dashboard_accounts)


# --- health: is the daemon working, and what waits for what ---------------------------------------
def posts_wait_because(health: dict) -> str:
    """Why posts wait, in the order the operator has to fix it."""
    settings = app.settings()
    active = [a for a in accounts if a["status"] == "active"]
    if settings.hub_group_id is None:
        return "HUB_GROUP_ID is not set: posts wait in the outbox until it is"
    if not active:
        return "no active Telegram account posts them"
    if all(a["flood_waiting"] for a in active):
        return f"Telegram asked to wait (flood wait until {app.when(min(a['flood_wait_until'] for a in active))})"
    if not alive(health):
        return "the daemon is not running"
    return f"being posted, at most {settings.hub_posts_per_minute} a minute"


def alive(health: dict) -> bool:
    last = health["last_report"]
    return last is not None and (datetime.now(timezone.utc) - last).total_seconds() < ALIVE_SECONDS


health = app.one(queries.dashboard_health)
with st.container(border=True, key="health"):
    cols = st.columns(4)
    if alive(health):
        cols[0].markdown(":green[:material/check_circle:] **Daemon running**")
    else:
        cols[0].markdown(":red[:material/cancel:] **Daemon not running**")
    cols[0].caption(f"last report {app.when(health['last_report'], empty='never')}")
    cols[1].markdown("**Last job finished**")
    cols[1].caption(f"{app.when(health['last_job_finished'], empty='none yet')} · "
                    f"{app.plural(health['jobs_waiting'], 'job')} waiting")
    cols[2].markdown("**Accounts**")
    cols[2].caption("  \n".join(
        app.md(f"{a['display_name'] or a['username'] or 'account ' + str(a['id'])}: "
               + ("flood wait" if a["flood_waiting"] else a["status"])) for a in accounts)
        or "none logged in")
    cols[3].markdown(f"**{app.plural(health['posts_waiting'], 'post')} waiting**")
    cols[3].caption(app.md(posts_wait_because(health)) if health["posts_waiting"] else
                    f"last post {app.when(health['last_post'], empty='none yet')}")

cols = st.columns(6)
cols[0].metric("Messages read", f"{counts['messages_scanned']:,}",
               help="Messages of the watched chats read so far, and of imported exports")
cols[1].metric("Media analysed", f"{counts['media_analysed']:,}",
               help=f"{counts['media_failed']} unreadable, {counts['media_skipped']} skipped (too large)")
cols[2].metric("Faces", f"{counts['faces']:,}",
               help=f"{counts['faces_assigned']} in persons, {counts['faces_pending']} waiting for "
                    f"more sightings, {counts['faces_review']} for review")
cols[3].metric("Persons", f"{counts['persons']:,}", help=f"and {counts['persons_hidden']} hidden")
cols[4].metric("Posted", f"{counts['posts']:,}",
               help=f"{counts['posts_due']} waiting, {counts['posts_failed']} failed")
cols[5].metric("Errors", f"{counts['errors']:,}", help=f"{counts['errors_today']} in the last 24 hours")
if counts["faces_review"] or counts["suggestions_open"]:
    st.page_link(app.REVIEW_PAGE, icon=":material/rule:",
                 label=f"Review: {app.plural(counts['suggestions_open'], 'merge suggestion')}, "
                       f"{app.plural(counts['faces_review'], 'face')} to decide")

# --- work over time ------------------------------------------------------------------------------
st.subheader("Work over time")
period = st.selectbox("Period", list(PERIODS), index=0, label_visibility="collapsed")
hours, bucket = PERIODS[period]
metrics = pd.DataFrame(app.rows(queries.dashboard_metrics, {"hours": hours, "bucket": bucket}),
                       columns=["bucket", "metric_name", "total", "peak"])
if metrics.empty:
    st.info("No metrics in this period yet: the daemon records them once a minute while it runs.")
else:
    metrics["bucket"] = metrics["bucket"].map(app.local)
    seconds = BUCKET_SECONDS[bucket]
    now = app.local(datetime.now(timezone.utc))
    # The whole period, however little data, up to the end of the bucket "now" lies in: its bar
    # is drawn at the bucket's middle, which may lie after now (right after an import, all of
    # the work is in that bucket).
    period_range = [now - timedelta(hours=hours), max(now, metrics["bucket"].max() + timedelta(seconds=seconds))]
    work = metrics[metrics["metric_name"].isin(list(WORK_METRICS))].copy()
    queue = metrics[metrics["metric_name"].isin(list(QUEUE_GAUGES))].copy()
    left, right = st.columns(2)
    if not work.empty:
        work["what"] = work["metric_name"].map(WORK_METRICS)
        # Bars at the middle of their bucket and as wide as it (shared by the series): plotly
        # would otherwise draw a lone bucket as a hairline on a day-long axis.
        work["bucket"] = work["bucket"] + timedelta(seconds=seconds / 2)
        figure = px.bar(work, x="bucket", y="total", color="what", barmode="group",
                        labels={"bucket": "", "total": f"per {bucket}", "what": ""},
                        title="Work done", range_x=period_range)
        figure.update_traces(width=seconds * 1000 * 0.8 / work["what"].nunique())
        left.plotly_chart(figure, width="stretch")
    if not queue.empty:
        queue["what"] = queue["metric_name"].map(QUEUE_GAUGES)
        figure = px.line(queue, x="bucket", y="peak", color="what", markers=True,
                         labels={"bucket": "", "peak": "jobs waiting", "what": ""},
                         title="Queue depth", range_x=period_range)
        figure.update_yaxes(rangemode="tozero")
        right.plotly_chart(figure, width="stretch")

# --- the queue now -------------------------------------------------------------------------------
st.subheader("Queue")
jobs = {r["status"]: r for r in app.rows(queries.dashboard_jobs_by_status)}
queued, staged = (jobs.get(s, {}).get("jobs", 0) for s in ("queued", "staged"))
cols = st.columns(5)
cols[0].metric("To download", f"{queued:,}")
cols[1].metric("To analyse", f"{staged:,}")
for col, status in zip(cols[2:], ("done", "failed", "skipped")):
    col.metric(status.capitalize(), f"{jobs.get(status, {}).get('jobs', 0):,}")

# --- accounts ------------------------------------------------------------------------------------
st.subheader("Accounts")
if not accounts:
    st.info(f"No Telegram account yet: log one in with `{python_command()} init_account.py`.")
else:
    def account_state(a: dict) -> str:
        if a["flood_waiting"]:
            return f"paused by a flood wait until {app.when(a['flood_wait_until'])}"
        return a["status"] + (f": {a['last_error']}" if a["status"] == "error" and a["last_error"] else "")

    st.dataframe(pd.DataFrame([{
        "Account": a["display_name"] or (f"@{a['username']}" if a["username"] else f"account {a['id']}"),
        "Phone": app.masked_phone(a["phone_number"]),
        "State": account_state(a),
        "Chats": a["chats"],
        "Last active": app.when(a["last_active"], empty=""),
        "Last error": a["last_error"] or "",
    } for a in accounts]), hide_index=True, width="stretch")

# --- waiting for Telegram --------------------------------------------------------------------------
st.subheader("Changes for Telegram")
actions = app.rows(queries.dashboard_actions_recent, {"limit": 50})
if not actions:
    st.caption("Nothing waiting: corrections that change Telegram appear here until the daemon has applied them.")
else:
    names = app.person_labels(actions)
    st.dataframe(pd.DataFrame([{
        "Requested": app.local(a["created_at"]),
        "Change": describe_action(a["action"], a["payload"], names, a["status"]),
        "State": a["status"] + (f" ({a['attempts']} attempts)" if a["attempts"] > 1 else ""),
        "Applied": app.when(a["applied_at"], empty=""),  # text: no "None" while pending
        "Error": a["error"] or "",
    } for a in actions]), hide_index=True, width="stretch")
