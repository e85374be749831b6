-- The dashboard's own records (issue 18).
--
-- imported_chats: the chats of Telegram Desktop exports that `main.py import` read, with the
-- export's name for them. A message imported from an export has no scan_checkpoints row (no
-- account reads it), so without this the chat had no name anywhere: captions said "chat -100…"
-- and the dashboard's Chats page said no chat was known.
CREATE TABLE IF NOT EXISTS imported_chats (
    chat_id BIGINT PRIMARY KEY,                 -- Telegram's marked id, as everywhere
    chat_title TEXT,                            -- the export's "name"
    export_type TEXT,                           -- the export's "type" (private_supergroup, personal_chat, …)
    messages INTEGER NOT NULL DEFAULT 0 CHECK (messages >= 0),   -- messages in its latest import
    media INTEGER NOT NULL DEFAULT 0 CHECK (media >= 0),         -- photo and video files among them
    first_imported_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_imported_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- dashboard_audit: every change made on the dashboard, who made it and what it changed, in the
-- operator's words and as data (what undoing it would need). Written in the same transaction
-- as the change (dashboard_pages/audit.py: record), so the log and the archive cannot disagree.
CREATE TABLE IF NOT EXISTS dashboard_audit (
    id BIGSERIAL PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor TEXT NOT NULL DEFAULT 'dashboard',    -- who: the dashboard has one password, one operator
    action TEXT NOT NULL,                       -- e.g. rename_person, merge_persons, retry_jobs
    summary TEXT NOT NULL,                      -- what the operator was told, as plain text
    details JSONB NOT NULL DEFAULT '{}'::jsonb  -- ids and values before and after
);
CREATE INDEX IF NOT EXISTS idx_dashboard_audit_at ON dashboard_audit (at DESC);
