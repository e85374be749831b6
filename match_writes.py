"""What one `IdentityMatcher.assign` call changes, and the bookkeeping it owes at the end.

`Run` holds the call's connection and what it did (posts now due, persons touched and created,
merge-suggestion pairs seen, faces that grew a person and whose pending neighbours must be
decided again). Its methods are the matcher's writes; the SQL is in sql/persons.sql.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from database import queries
from match_rules import Neighbour, PendingFace

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """The state of one `assign` call (or one merge-suggestion pass)."""

    conn: psycopg.AsyncConnection
    media_item_id: int
    locked: bool = False
    due: list[tuple[int, int]] = field(default_factory=list)
    touched: set[int] = field(default_factory=set)
    created: list[int] = field(default_factory=list)
    pairs: dict[tuple[int, int], float] = field(default_factory=dict)
    grown: deque = field(default_factory=deque)   # (face_id, person_id, embedding) to cascade from

    async def claim_person(self, person_id: int) -> int | None:
        """The person faces for `person_id` go to now (a merge survivor, or None if it was
        dissolved), locked (FOR NO KEY UPDATE) until the transaction ends."""
        for _ in range(5):
            row = await (await self.conn.execute(queries.persons_claim,
                                                 {"person_id": person_id})).fetchone()
            if row is None or row[0] == person_id:
                return row and row[0]
            person_id = row[0]
        raise RuntimeError(f"person {person_id}: merged_into chain too long")

    async def make_due(self, person_id: int, media_item_ids: list[int]) -> None:
        rows = await (await self.conn.execute(queries.persons_insert_due, {
            "person_id": person_id, "media_item_ids": sorted(set(media_item_ids))})).fetchall()
        self.due.extend((r[0], r[1]) for r in rows)
        self.touched.add(person_id)

    async def assign(self, person_id: int, members: list[PendingFace], similarities: list[float],
                     assigned_by: str) -> int | None:
        """Pending faces (of other media items, or founders) join `person_id`; returns the
        person they joined (None if it was dissolved meanwhile)."""
        person_id = await self.claim_person(person_id)
        if person_id is None:
            return None
        rows = await (await self.conn.execute(queries.persons_assign, {
            "person_id": person_id, "assigned_by": assigned_by, "from_state": "pending",
            "face_ids": [m.face_id for m in members],
            "similarities": [round(float(s), 4) for s in similarities],
        })).fetchall()
        if len(rows) != len(members):  # the lock makes this impossible; fail loudly if not
            raise RuntimeError(f"{len(members) - len(rows)} pending faces changed under the "
                               f"persons lock while joining person {person_id}")
        await self.make_due(person_id, [m.media_item_id for m in members])
        self.grown.extend((m.face_id, person_id, m.embedding) for m in members)
        return person_id

    async def create_person(self) -> int:
        person_id = (await (await self.conn.execute(queries.persons_create)).fetchone())[0]
        self.created.append(person_id)
        return person_id

    def note_pair(self, person_id: int, n: Neighbour) -> None:
        """Persons `person_id` and `n`'s are a possible merge (kept: the best similarity)."""
        if n.person_id is None or n.person_id == person_id:
            return
        key = (min(person_id, n.person_id), max(person_id, n.person_id))
        self.pairs[key] = max(self.pairs.get(key, -1.0), n.similarity)

    async def record_suggestions(self) -> int:
        made = 0
        for (a, b), score in sorted(self.pairs.items()):
            made += len(await (await self.conn.execute(queries.persons_suggest_merge, {
                "person_a": a, "person_b": b, "score": round(score, 4)})).fetchall())
        return made

    async def refresh(self) -> None:
        """Counts and covers of the persons touched, in one order everywhere (no deadlocks)."""
        for person_id in sorted(self.touched):
            await self.conn.execute(queries.persons_refresh, {"person_id": person_id})
        if self.touched:
            await self.conn.execute(queries.persons_seen, {"person_ids": sorted(self.touched)})
