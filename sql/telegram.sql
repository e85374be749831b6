-- The Telegram side (accounts.py, flood_waits.py, history_scanner.py, realtime_scanner.py,
-- downloads.py, topics.py, chats.py, add_chat.py, init_account.py): accounts, watched chats and their history cursors, the jobs the scanners
-- insert, the requests that need a Telegram client (dashboard_actions), and persons' topics.
-- Chat ids are Telegram's marked ids everywhere (-100… channels and supergroups, negative basic
-- groups, positive users).

-- ---------------------------------------------------------------------------------------------
-- Accounts

-- name: tg_active_accounts
-- The accounts the daemon holds a client for, oldest first (the first is the default hub poster).
SELECT id, phone_number, session_file_path, status, telegram_user_id, username, display_name
FROM telegram_accounts WHERE status = 'active' ORDER BY id;

-- name: tg_all_accounts
-- Every account, for the scripts' listings, for resolving "id or phone" on the command line, and
-- for the daemon's start (it holds the active ones and watches the others become active again).
SELECT id, phone_number, session_file_path, status, telegram_user_id, username, display_name,
       flood_wait_until, last_error
FROM telegram_accounts ORDER BY id;

-- name: tg_account_connected
-- The client of account %(account_id)s is logged in as this Telegram user.
UPDATE telegram_accounts
SET telegram_user_id = %(telegram_user_id)s, username = %(username)s, display_name = %(display_name)s,
    last_active = now(), last_error = NULL
WHERE id = %(account_id)s;

-- name: tg_account_problem
-- Account %(account_id)s cannot be used as it is: %(error)s says what to do. %(status)s is
-- 'error' when the operator must act (log in again), else the status stays.
UPDATE telegram_accounts
SET last_error = %(error)s, status = coalesce(%(status)s, status)
WHERE id = %(account_id)s;

-- name: tg_account_statuses
-- The status of accounts %(account_ids)s (is one that was logged out logged in again?).
SELECT id, status FROM telegram_accounts WHERE id = ANY(%(account_ids)s::int[]);

-- name: tg_account_flood
-- A long flood wait on account %(account_id)s: it pauses (only this account) until the returned
-- time. A later, shorter wait never shortens a longer one.
UPDATE telegram_accounts
SET flood_wait_until = greatest(coalesce(flood_wait_until, now()),
                                now() + make_interval(secs => %(seconds)s)),
    last_error = %(error)s
WHERE id = %(account_id)s
RETURNING flood_wait_until, greatest(0, extract(epoch FROM flood_wait_until - now()))::float AS wait_seconds;

-- name: tg_account_flood_left
-- Seconds account %(account_id)s must still wait (0 when it may work).
SELECT coalesce(greatest(0, extract(epoch FROM flood_wait_until - now())), 0)::float AS wait_seconds
FROM telegram_accounts WHERE id = %(account_id)s;

-- name: tg_upsert_account
-- init_account.py: the account logged in; a known phone number keeps its id (and its chats).
INSERT INTO telegram_accounts (phone_number, session_file_path, status, telegram_user_id, username,
                               display_name, last_active)
VALUES (%(phone_number)s, %(session_file_path)s, 'active', %(telegram_user_id)s, %(username)s,
        %(display_name)s, now())
ON CONFLICT (phone_number) DO UPDATE
SET session_file_path = EXCLUDED.session_file_path, status = 'active',
    telegram_user_id = EXCLUDED.telegram_user_id, username = EXCLUDED.username,
    display_name = EXCLUDED.display_name, last_active = now(), last_error = NULL
RETURNING id, (xmax = 0) AS created;

-- ---------------------------------------------------------------------------------------------
-- Watched chats and history sweeps

-- name: tg_watched_chats
-- The active chats of accounts %(account_ids)s (never the hub %(hub_chat_id)s).
SELECT id, account_id, chat_id, chat_title, chat_username, chat_type, noforwards, scan_mode,
       state, last_processed_message_id, processed_messages, total_messages, deferred_until,
       (deferred_until IS NOT NULL AND deferred_until > now()) AS deferred, last_sweep_at
FROM scan_checkpoints
WHERE account_id = ANY(%(account_ids)s::integer[]) AND state = 'active'
  AND chat_id IS DISTINCT FROM %(hub_chat_id)s::bigint
ORDER BY account_id, id;

-- name: tg_checkpoint
-- The watched chat %(chat_id)s of account %(account_id)s.
SELECT id, account_id, chat_id, chat_title, chat_username, chat_type, noforwards, scan_mode, state,
       last_processed_message_id, processed_messages, total_messages, skipped_media,
       deferred_until, last_sweep_at, last_error
FROM scan_checkpoints WHERE account_id = %(account_id)s AND chat_id = %(chat_id)s;

-- name: tg_sweep_batch
-- Job keys: a message is (chat, message id) in a channel or supergroup (marked ids below
-- -1000000000000), and (chat, message id, account) in a private chat or basic group, whose
-- message ids are numbered per account (media_jobs.id_scope, migration 0004).
-- One batch of a history sweep, atomically: the jobs of the batch's media messages (a message
-- already known, e.g. from a live update, is left as it is) and the cursor moved to
-- %(cursor)s, the batch's newest message. Oversized media are jobs with status 'skipped' and
-- are counted in skipped_media (only when the job is new, so nothing is counted twice).
-- Returns the chat's state after the batch (a chat paused or removed meanwhile stops the sweep).
WITH new_jobs AS (
    INSERT INTO media_jobs (source_chat_id, source_message_id, id_scope, account_id, media_key, media_type,
                            mime_type, file_size, message_date, status, last_error, finished_at)
    SELECT %(chat_id)s, m.message_id,
           -- whose id space the message ids are: the account's, except in channels and supergroups
           CASE WHEN %(chat_id)s::bigint > -1000000000000 THEN %(account_id)s ELSE 0 END,
           %(account_id)s, m.media_key, m.media_type, m.mime_type,
           m.file_size, m.message_date, m.status, m.note,
           CASE WHEN m.status = 'skipped' THEN now() END
    FROM unnest(%(message_ids)s::bigint[], %(media_keys)s::text[], %(media_types)s::text[],
                %(mime_types)s::text[], %(file_sizes)s::bigint[], %(message_dates)s::timestamptz[],
                %(statuses)s::text[], %(notes)s::text[])
         AS m(message_id, media_key, media_type, mime_type, file_size, message_date, status, note)
    ON CONFLICT (source_chat_id, source_message_id, id_scope) DO NOTHING
    RETURNING status
)
UPDATE scan_checkpoints
SET last_processed_message_id = greatest(last_processed_message_id, %(cursor)s),
    processed_messages = processed_messages + %(messages)s,
    total_messages = greatest(coalesce(%(total)s, total_messages), processed_messages + %(messages)s),
    skipped_media = skipped_media + (SELECT count(*) FROM new_jobs WHERE status = 'skipped'),
    last_updated = now(), last_error = NULL
WHERE id = %(checkpoint_id)s
RETURNING state, (SELECT count(*) FROM new_jobs) AS new_jobs;

-- name: tg_live_job
-- The fast path: the job of one new message (chat %(chat_id)s, message %(message_id)s) seen
-- by a live update. Does not move the cursor: only history sweeps do. Returns the job if new.
WITH new_job AS (
    INSERT INTO media_jobs (source_chat_id, source_message_id, id_scope, account_id, media_key, media_type,
                            mime_type, file_size, message_date, status, last_error, finished_at)
    VALUES (%(chat_id)s, %(message_id)s,
            CASE WHEN %(chat_id)s::bigint > -1000000000000 THEN %(account_id)s ELSE 0 END,
            %(account_id)s, %(media_key)s, %(media_type)s,
            %(mime_type)s, %(file_size)s, %(message_date)s, %(status)s, %(note)s,
            CASE WHEN %(status)s = 'skipped' THEN now() END)
    ON CONFLICT (source_chat_id, source_message_id, id_scope) DO NOTHING
    RETURNING id, status
), counted AS (
    UPDATE scan_checkpoints SET skipped_media = skipped_media + 1
    WHERE account_id = %(account_id)s AND chat_id = %(chat_id)s
      AND EXISTS (SELECT 1 FROM new_job WHERE status = 'skipped')
)
SELECT id, status FROM new_job;

-- name: tg_sweep_finished
-- A sweep read chat %(checkpoint_id)s up to its newest message: the backfill (if it was one) is
-- over, the chat is followed live, and everything there is has been read.
UPDATE scan_checkpoints
SET scan_mode = 'realtime', last_sweep_at = now(), deferred_until = NULL, last_error = NULL,
    total_messages = processed_messages, last_updated = now()
WHERE id = %(checkpoint_id)s;

-- name: tg_wake_account_jobs
-- Account %(account_id)s can be used again (logged in again): its jobs that wait for it (a
-- download deferred while it was logged out) are due now, not after their deferral.
UPDATE media_jobs SET run_after = now(), updated_at = now()
WHERE account_id = %(account_id)s AND status IN ('queued', 'staged') AND run_after > now();

-- name: tg_move_migrated_chat
-- Watched chat %(checkpoint_id)s, a basic group read to its end, became the supergroup
-- %(new_chat_id)s: the record moves there and the new chat's history is read from its start
-- (its own message ids; the old group's jobs keep the old chat's id). Nothing if the account
-- already watches the supergroup (tg_retire_migrated_chat then).
UPDATE scan_checkpoints
SET chat_id = %(new_chat_id)s, chat_type = 'supergroup', last_processed_message_id = 0,
    processed_messages = 0, total_messages = 0, scan_mode = 'backfill', deferred_until = NULL,
    last_error = NULL, last_sweep_at = NULL, last_updated = now()
WHERE id = %(checkpoint_id)s AND state = 'active'
  AND NOT EXISTS (SELECT 1 FROM scan_checkpoints other
                  WHERE other.account_id = scan_checkpoints.account_id AND other.chat_id = %(new_chat_id)s)
RETURNING id;

-- name: tg_retire_migrated_chat
-- The basic group %(checkpoint_id)s migrated to a supergroup the account already watches.
UPDATE scan_checkpoints
SET state = 'removed', last_error = %(note)s, last_updated = now()
WHERE id = %(checkpoint_id)s AND state = 'active';

-- name: tg_sweep_paused
-- A sweep of chat %(checkpoint_id)s stopped early (its turn ended); it goes on from the cursor.
UPDATE scan_checkpoints SET last_sweep_at = now(), last_updated = now() WHERE id = %(checkpoint_id)s;

-- name: tg_defer_chat
-- Chat %(checkpoint_id)s is not read again for %(seconds)s seconds, because of %(error)s
-- (a flood wait of its account, an error Telegram gave for it).
UPDATE scan_checkpoints
SET deferred_until = now() + make_interval(secs => %(seconds)s), last_error = %(error)s,
    last_updated = now()
WHERE id = %(checkpoint_id)s;

-- name: tg_upsert_chat
-- An add_chat request resolved: account %(account_id)s watches chat %(chat_id)s. A chat watched
-- before (removed or paused) is active again and goes on from its cursor.
INSERT INTO scan_checkpoints (account_id, chat_id, chat_title, chat_username, chat_type, noforwards,
                              state, scan_mode, last_processed_message_id)
VALUES (%(account_id)s, %(chat_id)s, %(chat_title)s, %(chat_username)s, %(chat_type)s,
        %(noforwards)s, 'active', 'backfill', 0)
ON CONFLICT (account_id, chat_id) DO UPDATE
SET chat_title = EXCLUDED.chat_title, chat_username = EXCLUDED.chat_username,
    chat_type = EXCLUDED.chat_type, noforwards = EXCLUDED.noforwards, state = 'active',
    deferred_until = NULL, last_error = NULL, last_updated = now()
RETURNING id, (xmax = 0) AS created;

-- name: tg_set_chat_state
-- Pause ('paused'), resume ('active') or stop watching ('removed') the chats that match: by
-- checkpoint id %(checkpoint_id)s, or by account %(account_id)s (NULL: any) and chat id
-- %(chat_id)s or @username %(chat_username)s. Returns the chats changed.
UPDATE scan_checkpoints
SET state = %(state)s, last_updated = now(),
    deferred_until = CASE WHEN %(state)s = 'active' THEN NULL ELSE deferred_until END
WHERE (id = %(checkpoint_id)s
       OR (%(checkpoint_id)s::integer IS NULL
           AND (%(account_id)s::integer IS NULL OR account_id = %(account_id)s)
           AND (chat_id = %(chat_id)s OR lower(chat_username) = lower(%(chat_username)s))))
  AND state <> %(state)s
RETURNING id, account_id, chat_id, chat_title, state;

-- name: tg_chat_listing
-- add_chat.py --list: every chat of every account with its progress and its jobs.
SELECT c.id, c.account_id, a.phone_number, a.username AS account_username, c.chat_id,
       c.chat_title, c.chat_username, c.chat_type, c.noforwards, c.scan_mode, c.state,
       c.processed_messages, c.total_messages, c.last_processed_message_id, c.skipped_media,
       c.deferred_until, c.last_sweep_at, c.last_error,
       (SELECT count(*) FROM media_jobs j WHERE j.source_chat_id = c.chat_id
          AND j.status IN ('queued', 'staged')) AS jobs_waiting
FROM scan_checkpoints c LEFT JOIN telegram_accounts a ON a.id = c.account_id
ORDER BY c.account_id, c.state, c.chat_title NULLS LAST, c.chat_id;

-- name: tg_chat_sources
-- What the uploader needs to know about chat %(chat_id)s (title, @username, kind, protection),
-- from whichever account watches it; the hub account's own row first.
SELECT account_id, chat_title, chat_username, chat_type, noforwards
FROM scan_checkpoints WHERE chat_id = %(chat_id)s
ORDER BY (account_id = %(hub_account_id)s) DESC, id
LIMIT 1;

-- ---------------------------------------------------------------------------------------------
-- Requests for the daemon (dashboard_actions)

-- name: tg_record_action
-- A request that needs a Telegram client (add_chat.py, the dashboard); the daemon applies it.
INSERT INTO dashboard_actions (action, payload) VALUES (%(action)s, %(payload)s) RETURNING id;

-- name: tg_pending_actions
-- Requests of the kinds %(actions)s not applied yet, oldest first.
SELECT id, action, payload, attempts FROM dashboard_actions
WHERE status = 'pending' AND action = ANY(%(actions)s::text[])
ORDER BY id LIMIT %(limit)s;

-- name: tg_lock_action
-- Lock request %(action_id)s while it is applied (another process applying it skips it).
SELECT id, action, payload, attempts FROM dashboard_actions
WHERE id = %(action_id)s AND status = 'pending'
FOR UPDATE SKIP LOCKED;

-- name: tg_finish_action
-- Request %(action_id)s is applied (%(status)s 'done') or given up ('failed', %(error)s says why).
UPDATE dashboard_actions
SET status = %(status)s, error = %(error)s, attempts = attempts + 1, applied_at = now()
WHERE id = %(action_id)s;

-- name: tg_action_failed_attempt
-- Applying request %(action_id)s failed (%(error)s); it stays pending for another attempt.
UPDATE dashboard_actions SET attempts = attempts + 1, error = %(error)s WHERE id = %(action_id)s;

-- name: tg_action_waits
-- Request %(action_id)s cannot be applied yet (%(error)s); not counted as an attempt.
UPDATE dashboard_actions SET error = %(error)s WHERE id = %(action_id)s;

-- name: tg_chat_requests
-- add_chat.py --list: requests for new chats that are not done yet.
SELECT id, action, payload, status, error, attempts, created_at FROM dashboard_actions
WHERE action = 'add_chat' AND status <> 'done' ORDER BY id;

-- ---------------------------------------------------------------------------------------------
-- Topics (persons' forum topics in the hub)

-- name: tg_person
-- Person %(person_id)s as the topic manager needs it.
SELECT id, label, hidden, merged_into, topic_id, hub_chat_id, topic_title, cover_face_id,
       cover_message_id, topic_request_random_id, topic_request_title
FROM telegram_topics WHERE id = %(person_id)s;

-- name: tg_topic_lock
-- Serialises topic creation of person %(person_id)s across processes for this transaction.
-- The first key is a fixed class: "topic" (0x746F7069).
SELECT pg_advisory_xact_lock(1953460329, %(person_id)s);

-- name: tg_set_topic
-- Person %(person_id)s's topic is %(topic_id)s in hub %(hub_chat_id)s, titled %(title)s; its
-- cover is not posted yet.
UPDATE telegram_topics
SET topic_id = %(topic_id)s, hub_chat_id = %(hub_chat_id)s, topic_title = %(title)s,
    cover_message_id = NULL, topic_request_random_id = NULL, topic_request_title = NULL
WHERE id = %(person_id)s;

-- name: tg_plan_topic_request
-- Person %(person_id)s has no topic in hub %(hub_chat_id)s: record the request that will create
-- it (%(random_id)s, titled %(title)s) unless one is recorded already, which is then sent again
-- as it was. Committed before the request is sent (see migrations/0003).
UPDATE telegram_topics
SET topic_request_random_id = %(random_id)s, topic_request_title = %(title)s
WHERE id = %(person_id)s AND topic_request_random_id IS NULL
  AND (topic_id IS NULL OR hub_chat_id <> %(hub_chat_id)s);

-- name: tg_topics_taken
-- Which of the topics %(topic_ids)s belong to a person already.
SELECT topic_id FROM telegram_topics WHERE topic_id = ANY(%(topic_ids)s::bigint[]);

-- name: tg_set_topic_title
UPDATE telegram_topics SET topic_title = %(title)s WHERE id = %(person_id)s;

-- name: tg_set_cover_message
UPDATE telegram_topics SET cover_message_id = %(message_id)s WHERE id = %(person_id)s;

-- name: tg_topic_gone
-- Telegram says topic %(topic_id)s of person %(person_id)s no longer exists: forget it (the next
-- due post creates a new one), and post again what the deleted topic held (its messages went
-- with it). The posts get new random ids: the old ones were used. Returns the person if it
-- still pointed at that topic.
WITH person AS (
    UPDATE telegram_topics SET topic_id = NULL, cover_message_id = NULL
    WHERE id = %(person_id)s AND topic_id = %(topic_id)s
    RETURNING id
), again AS (
    UPDATE uploaded_media u
    SET status = 'pending', uploaded_message_id = NULL, uploaded_at = NULL, attempts = 0,
        run_after = now(), random_id = (random() * 9.0e18)::bigint,
        last_error = 'its topic was deleted on Telegram; posted again in the new topic'
    FROM person WHERE u.topic_id = person.id AND u.status = 'posted'
    RETURNING u.id
)
SELECT (SELECT count(*) FROM person) AS forgotten, (SELECT count(*) FROM again) AS reposts;

-- name: tg_cover_crop
-- The JPEG crop of face %(face_id)s (a person's cover).
SELECT crop_jpeg FROM face_embeddings WHERE id = %(face_id)s;

-- name: tg_person_has_posts
-- Whether person %(person_id)s has posted anything (then a late cover is not "first" any more).
SELECT EXISTS (SELECT 1 FROM uploaded_media WHERE topic_id = %(person_id)s AND status = 'posted');
