-- The upload outbox (uploaded_media), drained by media_uploader.py. A row is one due post of a
-- media item into a person's topic (topic_id is the person, telegram_topics.id). Its life:
--   pending ──claimed──► sending ──Telegram accepted──► posted
--                           └──error──► pending (later) | failed | cancelled
-- A row is 'sending' from just before its request goes to Telegram until the answer is
-- recorded; run_after is then its lease: a 'sending' row whose lease ran out belongs to a
-- process that died, and is sent again with the same random_id (Telegram refuses a second copy).

-- name: upload_cancel_unpostable
-- Posts not sent yet of hidden persons ('person hidden': unhiding makes them due again, see
-- persons_resume_posts) and of persons merged into another (their media are due there).
UPDATE uploaded_media u
SET status = 'cancelled',
    last_error = CASE WHEN t.merged_into IS NOT NULL THEN 'person merged into another' ELSE 'person hidden' END
FROM telegram_topics t
WHERE u.topic_id = t.id AND u.status = 'pending' AND (t.hidden OR t.merged_into IS NOT NULL)
RETURNING u.id;

-- name: upload_claim_due
-- Lease up to %(limit)s due posts for %(lease_seconds)s seconds, oldest first: pending ones, and
-- 'sending' ones left by a process that died (their lease ran out). The random_id stays the one
-- the row has (it is set when the row becomes due); only a row without one gets one here.
WITH picked AS (
    SELECT u.id
    FROM uploaded_media u JOIN telegram_topics t ON t.id = u.topic_id
    WHERE u.status IN ('pending', 'sending') AND u.run_after <= now()
      AND NOT t.hidden AND t.merged_into IS NULL AND u.media_item_id IS NOT NULL
    ORDER BY u.run_after, u.id
    LIMIT %(limit)s
    FOR UPDATE OF u SKIP LOCKED
)
UPDATE uploaded_media u
SET status = 'sending', attempts = u.attempts + 1,
    run_after = now() + make_interval(secs => %(lease_seconds)s),
    random_id = coalesce(u.random_id, (random() * 9.0e18)::bigint)
FROM picked
WHERE u.id = picked.id
RETURNING u.id, u.topic_id AS person_id, u.media_item_id, u.source_chat_id, u.source_message_id,
          u.random_id, u.attempts;

-- name: upload_take_over_sending
-- Posts left 'sending' by an earlier process, due again now. Only the process holding the hub
-- account's session posts (one session, one process: sessions.SessionLock), so when it starts,
-- every 'sending' row is a dead process's: waiting for its lease to run out would only delay it.
-- They are sent again with the same random_id; Telegram refuses a second copy.
UPDATE uploaded_media SET run_after = now()
WHERE status = 'sending' AND run_after > now()
RETURNING id;

-- name: upload_media_item
-- Media item %(media_item_id)s: what it is and where it was first seen.
SELECT id, media_key, media_type, mime_type, file_size, source_chat_id, source_message_id,
       message_date
FROM media_items WHERE id = %(media_item_id)s;

-- name: upload_sources
-- Every message known to carry media item %(media_item_id)s (the same photo forwarded to many
-- chats), with what the uploader needs to choose how to post it: the chat (title, @username,
-- kind, protection), the account that reads it and whether the hub account %(hub_account_id)s
-- can fetch that very message (then it can re-send the media by reference), and a downloaded
-- file that may still be there. The item's own first message comes first.
-- hub_reads: in a channel or supergroup (id_scope 0) the hub account fetches message N if it
-- reads the chat; in a private chat or basic group, message N is the job's account's N, so only
-- when the hub account is the job's account (another account's N is another message).
SELECT j.id AS job_id, j.source_chat_id, j.source_message_id, j.account_id, j.origin, j.status,
       j.staged_path, j.message_date,
       coalesce(c.chat_title, ic.chat_title) AS chat_title,   -- an imported chat: the export's name
       c.chat_username, c.chat_type, coalesce(c.noforwards, FALSE) AS noforwards,
       j.id_scope,
       CASE WHEN j.id_scope <> 0 THEN j.id_scope = %(hub_account_id)s
            ELSE EXISTS (SELECT 1 FROM scan_checkpoints h
                         WHERE h.account_id = %(hub_account_id)s AND h.chat_id = j.source_chat_id)
       END AS hub_reads
FROM media_items m
JOIN media_jobs j ON j.media_key = m.media_key
LEFT JOIN LATERAL (
    SELECT chat_title, chat_username, chat_type, noforwards FROM scan_checkpoints s
    WHERE s.chat_id = j.source_chat_id
    ORDER BY (s.account_id = j.account_id) DESC, s.id LIMIT 1
) c ON TRUE
LEFT JOIN imported_chats ic ON ic.chat_id = j.source_chat_id
WHERE m.id = %(media_item_id)s
ORDER BY (j.source_chat_id = m.source_chat_id AND j.source_message_id = m.source_message_id) DESC,
         j.id;

-- name: upload_posted
-- Post %(upload_id)s is on Telegram as message %(message_id)s (%(note)s: how, if noteworthy).
-- Also counts it in its person's message_count.
WITH done AS (
    UPDATE uploaded_media
    SET status = 'posted', uploaded_message_id = %(message_id)s, uploaded_at = now(),
        run_after = now(), last_error = %(note)s
    WHERE id = %(upload_id)s AND status = 'sending'
    RETURNING topic_id
)
UPDATE telegram_topics t SET message_count = coalesce(t.message_count, 0) + 1
FROM done WHERE t.id = done.topic_id
RETURNING t.id;

-- name: upload_retry
-- Post %(upload_id)s goes back to the outbox, due in %(delay)s seconds (%(error)s says why).
-- %(counted)s is 0 when it only had to wait (a flood wait, a shutdown): the attempt is given back.
UPDATE uploaded_media
SET status = 'pending', run_after = now() + make_interval(secs => %(delay)s),
    last_error = %(error)s, attempts = greatest(attempts - 1 + %(counted)s, 0)
WHERE id = %(upload_id)s AND status = 'sending';

-- name: upload_give_up
-- Post %(upload_id)s ends as %(status)s ('failed' or 'cancelled') because of %(error)s.
UPDATE uploaded_media SET status = %(status)s, last_error = %(error)s, run_after = now()
WHERE id = %(upload_id)s AND status IN ('sending', 'pending');

-- name: upload_next_due
-- Seconds until the next post is due (NULL: nothing waits).
SELECT greatest(0, extract(epoch FROM min(run_after) - now()))::float AS seconds
FROM uploaded_media u JOIN telegram_topics t ON t.id = u.topic_id
WHERE u.status IN ('pending', 'sending') AND NOT t.hidden AND t.merged_into IS NULL;

-- name: upload_rows
-- Posts %(upload_ids)s (delete_posts: which messages to delete).
SELECT id, topic_id, status, uploaded_message_id FROM uploaded_media
WHERE id = ANY(%(upload_ids)s::bigint[]) ORDER BY id;

-- name: upload_withdrawn
-- Posts %(upload_ids)s were deleted from their topic (or never sent): cancelled.
WITH gone AS (
    UPDATE uploaded_media
    SET status = 'cancelled', last_error = 'withdrawn: the face was moved out of this person'
    WHERE id = ANY(%(upload_ids)s::bigint[]) AND status IN ('posted', 'pending', 'failed')
    RETURNING topic_id, (uploaded_message_id IS NOT NULL AND uploaded_at IS NOT NULL) AS was_posted
)
UPDATE telegram_topics t
SET message_count = greatest(coalesce(t.message_count, 0) - (SELECT count(*) FROM gone g
                                                             WHERE g.topic_id = t.id AND g.was_posted), 0)
WHERE t.id IN (SELECT topic_id FROM gone);

-- name: upload_topic_messages
-- The messages of topic %(topic_id)s in hub %(hub_chat_id)s that are recorded already (posts and
-- the cover): a lost post being looked for is none of them.
SELECT u.uploaded_message_id FROM uploaded_media u JOIN telegram_topics t ON t.id = u.topic_id
WHERE t.topic_id = %(topic_id)s AND t.hub_chat_id = %(hub_chat_id)s AND u.uploaded_message_id IS NOT NULL
UNION
SELECT cover_message_id FROM telegram_topics
WHERE topic_id = %(topic_id)s AND hub_chat_id = %(hub_chat_id)s AND cover_message_id IS NOT NULL;
