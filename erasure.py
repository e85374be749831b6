"""Erasure: "forget this person" (`main.py forget PERSON_ID --yes`, and the person page's
"Forget this person": dashboard_pages/erasure_ui.py).

In one transaction, under the identity matcher's lock:
- the person's faces go: embeddings, crops, rejections, and the faces waiting for review with the
  person among their candidates; the small copies kept of the photos they are in go with them
  (media_previews: a trigger drops a photo's copy whenever one of its faces is deleted); its merge
  suggestions go;
- its posts are withdrawn: due ones cancelled, posted ones deleted from its topic through the
  action queue (`delete_posts`), and the topic is renamed to a neutral title and closed
  (`rename_topic`, `hide_person`), by the daemon, as soon as it can;
- the person stays as a hidden, nameless record (the topic actions need it); persons merged into
  it lose their names too.

It is not rebuilt from the same faces: the faces are gone, and the media they were in stay
analysed, so the same photo or video seen again (another message, a forward) is not analysed again.
Not covered: `main.py reindex` analyses every media item again (and so could find the person
again); the cover crop message that opens its topic stays on Telegram until the topic is deleted
by hand (Telegram's "Delete topic").
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from database import queries
from identity_matcher import PERSONS_LOCK

ERASED_LABEL = "Erased person"


class ErasureError(Exception):
    """The person cannot be forgotten (no such person, or merged into another: forget that one)."""


@dataclass(frozen=True)
class Forgotten:
    person_id: int
    faces: int
    posts_withdrawn: int
    media_items: int

    def __str__(self) -> str:
        return (f"person {self.person_id} forgotten: {self.faces} face(s) deleted; {self.posts_withdrawn} "
                f"post(s) to delete from its topic, which is renamed and closed by the daemon")


def forget_person(conn: psycopg.Connection, person_id: int) -> Forgotten:
    with conn.transaction():
        conn.execute(queries.retention_pending_lock, {"key": PERSONS_LOCK})
        if conn.execute(queries.erasure_lock_person, {"person_id": person_id}).fetchone() is None:
            raise ErasureError(f"no person {person_id} (or it was merged into another: forget that one)")
        media = [r[0] for r in conn.execute(queries.erasure_person_media, {"person_id": person_id}).fetchall()]
        faces = conn.execute(queries.erasure_delete_faces, {"person_id": person_id}).fetchone()[0]
        posted = [r[0] for r in conn.execute(queries.persons_withdraw_posts, {
            "person_id": person_id, "media_item_ids": media}).fetchall()]
        conn.execute(queries.erasure_forget_person, {"person_id": person_id, "label": ERASED_LABEL})
        conn.execute(queries.erasure_persons_merged_into, {"person_id": person_id, "label": ERASED_LABEL})
        conn.execute(queries.persons_refresh, {"person_id": person_id})
        for action, payload in (("delete_posts", {"person_id": person_id, "uploaded_media_ids": posted}),
                                ("rename_topic", {"person_id": person_id, "title": ERASED_LABEL}),
                                ("hide_person", {"person_id": person_id})):
            if action != "delete_posts" or posted:
                conn.execute(queries.persons_record_action, {"action": action, "payload": Jsonb(payload)})
    return Forgotten(person_id, faces, len(posted), len(media))
