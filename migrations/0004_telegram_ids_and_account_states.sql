-- Version 4: Telegram's message ids as Telegram numbers them, and the states an account can be in.
--
-- Message ids: channels and supergroups number their messages per chat, but private chats and
-- basic groups number them per *account* (one counter per account). A job was unique per
-- (chat, message id), so when two accounts watched one basic group, or each had a private chat
-- with the same user, the second account's message N was dropped whenever the first had a
-- message N. A job is now unique per (chat, message id, id_scope): id_scope is the account
-- whose id space the message id belongs to (0 for channels, supergroups and exports).
ALTER TABLE media_jobs ADD COLUMN id_scope INTEGER NOT NULL DEFAULT 0;
UPDATE media_jobs SET id_scope = coalesce(account_id, 0)
WHERE origin = 'telegram' AND source_chat_id > -1000000000000;
ALTER TABLE media_jobs DROP CONSTRAINT media_jobs_source_chat_id_source_message_id_key;
ALTER TABLE media_jobs ADD CONSTRAINT media_jobs_message_key UNIQUE (source_chat_id, source_message_id, id_scope);

-- Account states (telegram_errors.py): logged out (log in again), banned or deleted, frozen
-- (read-only). Their work waits; the other accounts go on.
ALTER TABLE telegram_accounts DROP CONSTRAINT telegram_accounts_status_check;
ALTER TABLE telegram_accounts ADD CONSTRAINT telegram_accounts_status_check
    CHECK (status IN ('active', 'paused', 'error', 'logged_out', 'banned', 'frozen'));
