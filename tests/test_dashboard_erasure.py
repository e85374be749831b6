"""“Forget this person” on the person page (dashboard_pages/erasure_ui.py): only after typing the
person's number; the faces go at once, the topic's posts and title through the action queue, and
the audit log records it. The dashboard runs as its least-privilege role (dashboard_environment)."""

from __future__ import annotations

from test_dashboard import actions, biden, db, faces_of, signed_in  # noqa: F401
from test_dashboard_support import filled_db, filled_template  # noqa: F401


def test_forget_a_person_from_its_page(db):  # noqa: F811
    person = biden(db)
    db.execute("DELETE FROM dashboard_actions")
    at = signed_in("person", person=str(person))
    assert at.button(key=f"forget_go_{person}").disabled            # nothing typed yet
    at.text_input(key=f"forget_confirm_{person}").input(str(person + 1)).run()
    assert at.button(key=f"forget_go_{person}").disabled            # the wrong number
    assert len(faces_of(db, person)) == 5

    at.text_input(key=f"forget_confirm_{person}").input(str(person)).run()
    at.button(key=f"forget_go_{person}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert faces_of(db, person) == []
    assert f"Person #{person} is forgotten: 5 faces deleted" in at.success[0].value
    label, hidden = db.execute("SELECT label, hidden FROM telegram_topics WHERE id = %s", (person,)).fetchone()
    assert (label, hidden) == ("Erased person", True)
    assert [a for a, _ in actions(db)] == ["rename_topic", "hide_person"]
    action, summary = db.execute("SELECT action, summary FROM dashboard_audit ORDER BY id DESC LIMIT 1").fetchone()
    assert action == "forget_person" and summary.startswith(f"person {person} forgotten: 5 face(s) deleted")
