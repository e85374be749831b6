"""The changes for Telegram that corrections record (dashboard_actions), in the operator's words."""

from __future__ import annotations

from typing import Any

PERSON_KEYS = ("person_id", "survivor_id", "absorbed_id")


def person_ids(actions: list[dict[str, Any]]) -> list[int]:
    """Every person an action's payload names."""
    found = {a["payload"].get(key) for a in actions for key in PERSON_KEYS}
    return sorted(p for p in found if isinstance(p, int))


def describe_action(action: str, payload: dict[str, Any], names: dict[int, dict[str, Any]],
                    status: str = "pending") -> str:
    """One line saying what the daemon will do (or did) on Telegram. `names`: {person id:
    {"label", "topic_title"}} (app.person_labels)."""
    def who(key: str) -> str:
        person = payload.get(key)
        return f"«{(names.get(person) or {}).get('label') or f'person {person}'}»"

    if action == "rename_topic":
        # The label is the new name already; the topic's title is what Telegram shows until
        # the daemon has renamed it.
        before = (names.get(payload.get("person_id")) or {}).get("topic_title")
        if status == "done":
            return f"Renamed the topic to «{payload.get('title')}»"
        if before and before != payload.get("title"):
            return f"Rename the topic «{before}» to «{payload.get('title')}»"
        return f"Set the title of {who('person_id')}'s topic to «{payload.get('title')}»"
    if action == "merge_persons":
        return (f"Close the topic of {who('absorbed_id')} (merged into {who('survivor_id')}) "
                f"with a last note, renamed «{payload.get('title')}»")
    if action == "hide_person":
        return f"Close the topic of {who('person_id')} (hidden)"
    if action == "unhide_person":
        return f"Reopen the topic of {who('person_id')}"
    if action == "delete_posts":
        count = len(payload.get("uploaded_media_ids") or [])
        return f"Delete {count} post{'s' if count != 1 else ''} from the topic of {who('person_id')}"
    if action == "update_cover":
        return f"Update the cover post of {who('person_id')}'s topic"
    if action == "add_chat":
        chat = payload.get("chat") or payload.get("chat_identifier") or payload.get("chat_id")
        return f"Start watching the chat {chat}"
    return f"{action}: {payload}"
