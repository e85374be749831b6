-- The operator's recovery (recovery.py, used by `main.py retry` / `remove-chat` and the dashboard's
-- Errors page): failed work queued again, a chat removed. An error's type is the class name that
-- starts last_error ("AnalysisCrashed: …"); a text without one is of type 'other'.

-- name: recovery_failed_summary
-- Failed jobs and failed posts, by kind, chat and error type.
SELECT kind, chat_id, error_type, count(*) AS failed
FROM (
    SELECT 'job' AS kind, source_chat_id AS chat_id,
           CASE WHEN last_error ~ '^[A-Za-z_][A-Za-z0-9_.]*:' THEN split_part(last_error, ':', 1)
                ELSE 'other' END AS error_type
    FROM media_jobs WHERE status = 'failed'
    UNION ALL
    SELECT 'post', source_chat_id,
           CASE WHEN last_error ~ '^[A-Za-z_][A-Za-z0-9_.]*:' THEN split_part(last_error, ':', 1)
                ELSE 'other' END
    FROM uploaded_media WHERE status = 'failed'
) f
GROUP BY kind, chat_id, error_type
ORDER BY kind, count(*) DESC, chat_id, error_type;

-- name: recovery_retry_media
-- The media items of the failed jobs about to be retried (chat %(chat_id)s, error type
-- %(error_type)s; NULL: any) that were marked unreadable: to be analysed again.
UPDATE media_items m SET status = 'pending', analysed_at = NULL
WHERE m.status = 'failed' AND m.media_key IN (
    SELECT j.media_key FROM media_jobs j
    WHERE j.status = 'failed'
      AND (%(chat_id)s::bigint IS NULL OR j.source_chat_id = %(chat_id)s::bigint)
      AND (%(error_type)s::text IS NULL OR
           CASE WHEN j.last_error ~ '^[A-Za-z_][A-Za-z0-9_.]*:' THEN split_part(j.last_error, ':', 1)
                ELSE 'other' END = %(error_type)s::text));

-- name: recovery_retry_jobs
-- Failed jobs (chat %(chat_id)s, error type %(error_type)s; NULL: any) start again with a fresh
-- budget: Telegram's are downloaded again (their staged file was removed when they failed), an
-- export's file is analysed again where it is.
UPDATE media_jobs j
SET status = CASE WHEN j.account_id IS NULL THEN 'staged' ELSE 'queued' END,
    staged_path = CASE WHEN j.account_id IS NULL THEN j.staged_path END,
    attempts = 0, claims = 0, run_after = now(), lease_owner = NULL, lease_expires_at = NULL,
    finished_at = NULL, media_item_id = NULL,
    last_error = left('retried by the operator after ' || coalesce(j.last_error, 'an unknown error'), 2000),
    updated_at = now()
WHERE j.status = 'failed'
  AND (%(chat_id)s::bigint IS NULL OR j.source_chat_id = %(chat_id)s::bigint)
  AND (%(error_type)s::text IS NULL OR
       CASE WHEN j.last_error ~ '^[A-Za-z_][A-Za-z0-9_.]*:' THEN split_part(j.last_error, ':', 1)
            ELSE 'other' END = %(error_type)s::text)
RETURNING j.id;

-- name: recovery_retry_posts
-- Failed posts (source chat %(chat_id)s, error type %(error_type)s; NULL: any) are due again with
-- a fresh budget. Their random_id stays: a post Telegram did get is not sent twice.
UPDATE uploaded_media u
SET status = 'pending', attempts = 0, run_after = now(),
    last_error = left('retried by the operator after ' || coalesce(u.last_error, 'an unknown error'), 2000)
WHERE u.status = 'failed'
  AND (%(chat_id)s::bigint IS NULL OR u.source_chat_id = %(chat_id)s::bigint)
  AND (%(error_type)s::text IS NULL OR
       CASE WHEN u.last_error ~ '^[A-Za-z_][A-Za-z0-9_.]*:' THEN split_part(u.last_error, ':', 1)
            ELSE 'other' END = %(error_type)s::text)
RETURNING u.id;

-- name: recovery_unwatch_chat
-- Stop watching chat %(chat_id)s (with account %(account_id)s; NULL: with every account).
UPDATE scan_checkpoints SET state = 'removed', last_updated = now()
WHERE chat_id = %(chat_id)s AND (%(account_id)s::integer IS NULL OR account_id = %(account_id)s::integer)
RETURNING id, account_id, chat_title;

-- name: recovery_skip_chat_jobs
-- The removed chat's work not done yet ends as skipped (a worker holding one loses its lease).
UPDATE media_jobs
SET status = 'skipped', last_error = 'the chat was removed by the operator', lease_owner = NULL,
    lease_expires_at = NULL, finished_at = now(), updated_at = now()
WHERE source_chat_id = %(chat_id)s AND status IN ('queued', 'staged')
  AND (%(account_id)s::integer IS NULL OR account_id = %(account_id)s::integer)
RETURNING id, staged_path, staged_owned;

-- name: recovery_chat_media
-- Of the media seen in chat %(chat_id)s: those seen in no other chat (droppable unless posted),
-- and whether the hub has a post of it.
SELECT m.id, EXISTS (SELECT 1 FROM uploaded_media u
                     WHERE u.media_item_id = m.id AND u.status IN ('posted', 'sending')) AS posted
FROM media_items m
WHERE m.media_key IN (SELECT media_key FROM media_jobs WHERE source_chat_id = %(chat_id)s)
  AND NOT EXISTS (SELECT 1 FROM media_jobs o WHERE o.media_key = m.media_key AND o.source_chat_id <> %(chat_id)s);

-- name: recovery_persons_of_media
-- The persons with faces in the media items %(media_item_ids)s.
SELECT DISTINCT topic_id FROM face_embeddings
WHERE media_item_id = ANY(%(media_item_ids)s::bigint[]) AND topic_id IS NOT NULL;

-- name: recovery_delete_media
-- Media items %(media_item_ids)s go, with their faces and their unsent posts (cascade).
DELETE FROM media_items WHERE id = ANY(%(media_item_ids)s::bigint[]);

-- name: recovery_delete_chat_records
-- The jobs, errors and watch records of chat %(chat_id)s.
WITH jobs AS (
    DELETE FROM media_jobs WHERE source_chat_id = %(chat_id)s RETURNING id
), errors AS (
    DELETE FROM processing_errors
    WHERE job_id IN (SELECT id FROM jobs) OR error_context->>'source_chat_id' = %(chat_id)s::text
    RETURNING id
), watched AS (
    DELETE FROM scan_checkpoints WHERE chat_id = %(chat_id)s RETURNING id
)
SELECT (SELECT count(*) FROM jobs) AS jobs, (SELECT count(*) FROM errors) AS errors,
       (SELECT count(*) FROM watched) AS watched;
