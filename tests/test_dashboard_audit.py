"""The audit log: every change made on the dashboard is recorded with the change itself, in the
operator's words, and listed on the Audit log page."""

from __future__ import annotations

from test_dashboard import pick, biden, db, faces_of, persons, signed_in  # noqa: F401
from test_dashboard_support import FAMILY, filled_db, filled_template  # noqa: F401


def entries(db) -> list[tuple[str, str]]:
    return db.execute("SELECT action, summary FROM dashboard_audit ORDER BY id").fetchall()


def test_every_change_is_logged_and_listed(db):  # noqa: F811
    person = biden(db)
    first = persons(db)["Person 1"]
    at = signed_in("audit_log")
    assert "No change has been made on the dashboard yet" in at.info[0].value

    at = signed_in("person", person=str(person))
    at.text_input(key=f"rename_{person}").input("Joe [Biden]").run()
    at.button(key=f"rename_{person}_go").click().run()
    face = faces_of(db, person)[-1]
    pick(at, db, person, face)
    at.radio(key=f"move_dest_{person}").set_value("dismiss").run()
    at.button(key=f"move_go_{person}").click().run()
    at.selectbox(key=f"merge_other_{person}").select(first).run()
    at.radio(key=f"merge_keep_{person}").set_value(person).run()
    at.button(key=f"merge_go_{person}").click().run()
    at = signed_in("chats")
    family = db.execute("SELECT id FROM scan_checkpoints WHERE chat_id = %s", (FAMILY,)).fetchone()[0]
    at.selectbox(key="pause_chat").select(family).run()
    at.button(key="pause_resume").click().run()

    # Plain text, as the operator was told (the Markdown escapes of names are not kept).
    assert entries(db) == [
        ("rename_person", "Renamed to «Joe [Biden]»."),
        ("dismiss_faces", "The faces are dismissed."),
        ("merge_persons", "Merged «Person 1» into «Joe [Biden]»."),
        ("set_chat_state", "Paused Family photos (@family_photos)."),
    ]
    details = db.execute("SELECT details FROM dashboard_audit WHERE action = 'merge_persons'").fetchone()[0]
    assert details["args"] == [person, first]

    at.switch_page("dashboard_pages/audit_log.py").run()
    table = at.dataframe[0].value
    assert list(table["Change"]) == [s for _, s in reversed(entries(db))]   # newest first
    assert "4 changes, newest first." in [c.value for c in at.caption]

