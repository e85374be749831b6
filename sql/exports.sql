-- Telegram Desktop exports (exports.py).

-- name: export_record_chat
-- Chat %(chat_id)s of an export: its name and what the latest import of it held.
INSERT INTO imported_chats (chat_id, chat_title, export_type, messages, media)
VALUES (%(chat_id)s, %(chat_title)s, %(export_type)s, %(messages)s, %(media)s)
ON CONFLICT (chat_id) DO UPDATE
SET chat_title = coalesce(EXCLUDED.chat_title, imported_chats.chat_title),
    export_type = EXCLUDED.export_type,
    messages = greatest(imported_chats.messages, EXCLUDED.messages),
    media = greatest(imported_chats.media, EXCLUDED.media),
    last_imported_at = now();
