-- The dashboard's reads (dashboard.py, dashboard_pages/). Its corrections go through persons.py;
-- the only writes here are a chat's pause/resume. "Persons" are rows of telegram_topics that are
-- not merged into another; a merged person's faces and posts live on in its survivor.

-- ---------------------------------------------------------------------------------------------
-- Overview

-- name: dashboard_counts
-- One row of totals for the overview.
SELECT
    (SELECT coalesce(sum(processed_messages), 0) FROM scan_checkpoints)
        + (SELECT coalesce(sum(messages), 0) FROM imported_chats) AS messages_scanned,
    (SELECT coalesce(sum(messages), 0) FROM imported_chats) AS messages_imported,
    (SELECT count(*) FROM media_items WHERE status = 'analysed') AS media_analysed,
    (SELECT count(*) FROM media_items WHERE status = 'failed') AS media_failed,
    (SELECT count(*) FROM media_jobs WHERE status = 'skipped') AS media_skipped,
    (SELECT count(*) FROM face_embeddings) AS faces,
    (SELECT count(*) FROM face_embeddings WHERE state = 'assigned') AS faces_assigned,
    (SELECT count(*) FROM face_embeddings WHERE state = 'pending') AS faces_pending,
    (SELECT count(*) FROM face_embeddings WHERE state = 'review') AS faces_review,
    (SELECT count(*) FROM telegram_topics WHERE merged_into IS NULL AND NOT hidden) AS persons,
    (SELECT count(*) FROM telegram_topics WHERE merged_into IS NULL AND hidden) AS persons_hidden,
    (SELECT count(*) FROM uploaded_media WHERE status = 'posted') AS posts,
    (SELECT count(*) FROM uploaded_media WHERE status IN ('pending', 'sending')) AS posts_due,
    (SELECT count(*) FROM uploaded_media WHERE status = 'failed') AS posts_failed,
    (SELECT count(*) FROM processing_errors) AS errors,
    (SELECT count(*) FROM processing_errors WHERE error_timestamp > now() - interval '1 day') AS errors_today,
    (SELECT count(*) FROM merge_suggestions WHERE status = 'open') AS suggestions_open;

-- name: dashboard_health
-- Whether the daemon works: its workers write the queue gauges once a minute while they run
-- (last_report), the last job any of them finished, and what waits.
SELECT
    (SELECT max(recorded_at) FROM processing_metrics WHERE metric_name = 'queue_depth') AS last_report,
    (SELECT max(finished_at) FROM media_jobs WHERE status IN ('done', 'failed', 'skipped')) AS last_job_finished,
    (SELECT count(*) FROM media_jobs WHERE status IN ('queued', 'staged')) AS jobs_waiting,
    (SELECT count(*) FROM uploaded_media WHERE status IN ('pending', 'sending')) AS posts_waiting,
    (SELECT max(uploaded_at) FROM uploaded_media WHERE status = 'posted') AS last_post;

-- name: dashboard_jobs_by_status
-- The job queue by status: queued (to download) and staged (to analyse) are its depth.
SELECT status, count(*) AS jobs, min(run_after) FILTER (WHERE status IN ('queued', 'staged')) AS oldest_due
FROM media_jobs GROUP BY status ORDER BY status;

-- name: dashboard_metrics
-- processing_metrics of the last %(hours)s hours in buckets of %(bucket)s ('minute', 'hour',
-- 'day'): the sum (counters) and the maximum (gauges such as queue_depth) per metric.
SELECT date_trunc(%(bucket)s, recorded_at) AS bucket, metric_name,
       sum(metric_value) AS total, max(metric_value) AS peak
FROM processing_metrics
WHERE recorded_at > now() - make_interval(hours => %(hours)s::integer)
GROUP BY 1, 2
ORDER BY 1, 2;

-- name: dashboard_accounts
-- Every account: its state, and a flood wait that pauses it (flood_waiting: still running).
SELECT id, phone_number, username, display_name, status, last_active, last_error,
       flood_wait_until, coalesce(flood_wait_until > now(), FALSE) AS flood_waiting,
       (SELECT count(*) FROM scan_checkpoints c WHERE c.account_id = a.id AND c.state = 'active') AS chats
FROM telegram_accounts a
ORDER BY id;

-- name: dashboard_actions_recent
-- Requests waiting for the daemon (pending, failed) and those it applied in the last day.
SELECT id, action, payload, status, attempts, error, created_at, applied_at
FROM dashboard_actions
WHERE status <> 'done' OR applied_at > now() - interval '1 day'
ORDER BY id DESC
LIMIT %(limit)s;

-- ---------------------------------------------------------------------------------------------
-- Chats

-- name: dashboard_chats
-- Every watched chat per account, with its jobs still waiting and failed.
SELECT c.id, c.account_id, coalesce(a.display_name, a.username, 'account ' || a.id) AS account,
       c.chat_id, c.chat_title, c.chat_username, c.chat_type, c.scan_mode, c.state,
       coalesce(c.processed_messages, 0) AS processed_messages,
       coalesce(c.total_messages, 0) AS total_messages, c.last_processed_message_id, c.last_updated,
       c.last_sweep_at, c.skipped_media, c.deferred_until, c.last_error, c.added_at,
       j.waiting, j.failed
FROM scan_checkpoints c
LEFT JOIN telegram_accounts a ON a.id = c.account_id
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE status IN ('queued', 'staged')) AS waiting,
           count(*) FILTER (WHERE status = 'failed') AS failed
    FROM media_jobs WHERE source_chat_id = c.chat_id
) j ON TRUE
WHERE c.state <> 'removed'
ORDER BY c.account_id, c.chat_title NULLS LAST, c.chat_id;

-- name: dashboard_imported_chats
-- Chats known from Telegram Desktop exports (main.py import), with their jobs still waiting
-- and failed; a chat that is also watched through Telegram is listed with the watched ones too.
SELECT i.chat_id, i.chat_title, i.export_type, i.messages, i.media, i.first_imported_at,
       i.last_imported_at, j.done, j.waiting, j.failed,
       EXISTS (SELECT 1 FROM scan_checkpoints c WHERE c.chat_id = i.chat_id AND c.state <> 'removed') AS watched
FROM imported_chats i
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE status = 'done') AS done,
           count(*) FILTER (WHERE status IN ('queued', 'staged')) AS waiting,
           count(*) FILTER (WHERE status = 'failed') AS failed
    FROM media_jobs WHERE source_chat_id = i.chat_id AND origin = 'export'
) j ON TRUE
ORDER BY i.chat_title NULLS LAST, i.chat_id;

-- name: dashboard_set_chat_state
-- Pause (%(state)s = 'paused') or resume ('active') the watched chat %(checkpoint_id)s; a
-- removed chat stays removed. Returns the chat's title when it changed.
UPDATE scan_checkpoints SET state = %(state)s, last_updated = now()
WHERE id = %(checkpoint_id)s AND state IN ('active', 'paused') AND state <> %(state)s
RETURNING coalesce(chat_title, chat_id::text);

-- name: dashboard_chat_requests
-- add_chat requests the daemon has not applied yet.
SELECT id, payload, status, error, created_at
FROM dashboard_actions
WHERE action = 'add_chat' AND status <> 'done'
ORDER BY id DESC;

-- ---------------------------------------------------------------------------------------------
-- Errors

-- name: dashboard_error_types
SELECT error_type, count(*) AS errors, max(error_timestamp) AS last_seen
FROM processing_errors GROUP BY error_type ORDER BY count(*) DESC, error_type;

-- name: dashboard_errors
-- The newest %(limit)s errors of the types %(types)s (all types if empty) whose message
-- contains %(text)s (case-insensitive; '' matches all).
SELECT id, error_timestamp, error_type, error_message, error_context, job_id
FROM processing_errors
WHERE (cardinality(%(types)s::text[]) = 0 OR error_type = ANY(%(types)s::text[]))
  AND position(lower(%(text)s) IN lower(error_message)) > 0
ORDER BY error_timestamp DESC, id DESC
LIMIT %(limit)s;

-- ---------------------------------------------------------------------------------------------
-- Persons

-- name: dashboard_persons
-- A page of the gallery: persons whose label contains %(label)s ('' for all), hidden ones only
-- if %(show_hidden)s, ordered by %(sort)s ('faces', 'recent' or 'name'), %(limit)s after the
-- person whose cursor_* columns are the after_* parameters (all NULL: the first page). Keyset, not
-- OFFSET: a page costs the same wherever it is. Every order is one ascending key (text, number,
-- minus the face count, id), so one row comparison continues any of them. The page is chosen
-- from telegram_topics alone (its maintained counts), then completed: faces and media items,
-- first and last seen (the dates of the messages they appear in), the cover (chosen, else best face).
WITH keyed AS (
    SELECT t.*,
           CASE WHEN %(sort)s = 'name' THEN lower(t.label) ELSE '' END AS cursor_text,
           CASE WHEN %(sort)s = 'recent'
                THEN coalesce(-extract(epoch FROM t.last_seen)::float8, 'Infinity') ELSE 0 END
               AS cursor_number,
           -t.embedding_count::bigint AS cursor_count, t.id AS cursor_id
    FROM telegram_topics t
    WHERE t.merged_into IS NULL
      AND (%(show_hidden)s OR NOT t.hidden)
      AND position(lower(%(label)s) IN lower(t.label)) > 0
), page AS (
    SELECT * FROM keyed k
    WHERE %(after_id)s::integer IS NULL
       OR (k.cursor_text, k.cursor_number, k.cursor_count, k.cursor_id)
          > (%(after_text)s::text, %(after_number)s::float8, %(after_count)s::bigint, %(after_id)s::integer)
    ORDER BY k.cursor_text, k.cursor_number, k.cursor_count, k.cursor_id
    LIMIT %(limit)s
)
SELECT t.id, t.label, t.label_is_manual, t.hidden, t.topic_id, t.hub_chat_id,
       s.faces, s.media, t.message_count AS posts,
       t.cursor_text, t.cursor_number, t.cursor_count, t.cursor_id,
       coalesce(s.first_date, t.first_seen) AS first_seen,
       coalesce(s.last_date, t.last_seen) AS last_seen,
       cover.crop_jpeg AS cover
FROM page t
LEFT JOIN LATERAL (
    SELECT count(*) AS faces, count(DISTINCT f.media_item_id) AS media,
           min(m.message_date) AS first_date, max(m.message_date) AS last_date
    FROM face_embeddings f LEFT JOIN media_items m ON m.id = f.media_item_id
    WHERE f.topic_id = t.id
) s ON TRUE
LEFT JOIN LATERAL (
    SELECT f.crop_jpeg FROM face_embeddings f
    WHERE f.topic_id = t.id
    ORDER BY f.id = t.cover_face_id DESC, f.low_quality, f.quality_score DESC, f.id
    LIMIT 1
) cover ON TRUE
ORDER BY t.cursor_text, t.cursor_number, t.cursor_count, t.cursor_id;

-- name: dashboard_persons_total
-- How many persons the gallery's filter (%(label)s, %(show_hidden)s) finds.
SELECT count(*) FROM telegram_topics t
WHERE t.merged_into IS NULL AND (%(show_hidden)s OR NOT t.hidden)
  AND position(lower(%(label)s) IN lower(t.label)) > 0;

-- name: dashboard_person_choices
-- Every person that can take faces or a merge: id, label, hidden, number of faces.
SELECT t.id, t.label, t.hidden, t.embedding_count AS faces
FROM telegram_topics t WHERE t.merged_into IS NULL
ORDER BY lower(t.label), t.id;

-- name: dashboard_person
-- Person %(person_id)s with its counts, cover and (if merged) its survivor. First and last seen
-- are the dates of the messages its faces appear in, as in the gallery (else when they were found).
SELECT t.id, t.label, t.label_is_manual, t.hidden, t.topic_id, t.topic_title, t.hub_chat_id,
       t.merged_into, survivor.label AS merged_into_label, t.cover_face_id, t.cover_is_manual,
       coalesce(seen.first_date, t.first_seen) AS first_seen,
       coalesce(seen.last_date, t.last_seen) AS last_seen, t.created_at,
       (SELECT count(*) FROM face_embeddings f WHERE f.topic_id = t.id) AS faces,
       (SELECT count(DISTINCT f.media_item_id) FROM face_embeddings f WHERE f.topic_id = t.id) AS media,
       (SELECT count(*) FROM (SELECT media_item_id FROM face_embeddings f
                              WHERE f.topic_id = t.id AND f.media_item_id IS NOT NULL
                              UNION
                              SELECT media_item_id FROM uploaded_media u
                              WHERE u.topic_id = t.id AND u.media_item_id IS NOT NULL) x) AS media_listed,
       (SELECT count(*) FROM uploaded_media u WHERE u.topic_id = t.id AND u.status = 'posted') AS posts,
       (SELECT count(*) FROM uploaded_media u
        WHERE u.topic_id = t.id AND u.status IN ('pending', 'sending', 'failed')) AS posts_due,
       (SELECT f.crop_jpeg FROM face_embeddings f WHERE f.topic_id = t.id
        ORDER BY f.id = t.cover_face_id DESC, f.low_quality, f.quality_score DESC, f.id LIMIT 1) AS cover
FROM telegram_topics t
LEFT JOIN telegram_topics survivor ON survivor.id = t.merged_into
LEFT JOIN LATERAL (
    SELECT min(m.message_date) AS first_date, max(m.message_date) AS last_date
    FROM face_embeddings f JOIN media_items m ON m.id = f.media_item_id
    WHERE f.topic_id = t.id
) seen ON TRUE
WHERE t.id = %(person_id)s;

-- name: dashboard_person_faces
-- Up to %(limit)s faces of person %(person_id)s, best first (no quality first, as DESC puts
-- NULL), after the face whose cursor_* columns are the after_* parameters (all NULL: the first page;
-- keyset, not OFFSET), with where they come from.
SELECT f.id, f.crop_jpeg, coalesce(f.quality_score, 0) AS quality_score, f.low_quality, f.det_score,
       f.match_similarity, f.assigned_by, f.source_chat_id, f.source_message_id, f.media_item_id, f.frame_time,
       f.detection_timestamp, m.media_type, ch.chat_title, ch.chat_username,
       f.low_quality AS cursor_low_quality,
       coalesce(-f.quality_score, '-Infinity'::real) AS cursor_quality, f.id AS cursor_id
FROM face_embeddings f
LEFT JOIN media_items m ON m.id = f.media_item_id
LEFT JOIN LATERAL (
    SELECT chat_title, chat_username FROM (
        SELECT c.chat_title, c.chat_username, 0 AS rank, c.id FROM scan_checkpoints c
        WHERE c.chat_id = f.source_chat_id
        UNION ALL   -- a chat known from an export only: its name there
        SELECT i.chat_title, NULL, 1, 0 FROM imported_chats i WHERE i.chat_id = f.source_chat_id
    ) known ORDER BY rank, id LIMIT 1
) ch ON TRUE
WHERE f.topic_id = %(person_id)s
  AND (%(after_id)s::bigint IS NULL
       OR (f.low_quality, coalesce(-f.quality_score, '-Infinity'::real), f.id)
          > (%(after_low_quality)s::boolean, %(after_quality)s::real, %(after_id)s::bigint))
ORDER BY f.low_quality, coalesce(-f.quality_score, '-Infinity'::real), f.id
LIMIT %(limit)s;

-- name: dashboard_person_media
-- Up to %(limit)s media items of person %(person_id)s (with a face of it, or posted/due in its
-- topic), newest message first (undated last: as of 1900), after the item whose cursor_* columns are the
-- after_* parameters (all NULL: the first page; keyset, not OFFSET), with the source message and the
-- post in its topic.
WITH items AS (
    SELECT media_item_id FROM face_embeddings
    WHERE topic_id = %(person_id)s AND media_item_id IS NOT NULL
    UNION
    SELECT media_item_id FROM uploaded_media
    WHERE topic_id = %(person_id)s AND media_item_id IS NOT NULL
)
SELECT m.id, m.media_type, m.source_chat_id, m.source_message_id, m.message_date,
       ch.chat_title, ch.chat_username,
       (SELECT count(*) FROM face_embeddings f
        WHERE f.media_item_id = m.id AND f.topic_id = %(person_id)s) AS faces,
       u.status AS post_status, u.uploaded_message_id, u.uploaded_at, u.last_error AS post_error,
       coalesce(m.message_date, '1900-01-01 00:00+00') AS cursor_date, m.id AS cursor_id
FROM items JOIN media_items m ON m.id = items.media_item_id
LEFT JOIN uploaded_media u ON u.topic_id = %(person_id)s AND u.media_item_id = m.id
LEFT JOIN LATERAL (
    SELECT chat_title, chat_username FROM (
        SELECT c.chat_title, c.chat_username, 0 AS rank, c.id FROM scan_checkpoints c
        WHERE c.chat_id = m.source_chat_id
        UNION ALL   -- a chat known from an export only: its name there
        SELECT i.chat_title, NULL, 1, 0 FROM imported_chats i WHERE i.chat_id = m.source_chat_id
    ) known ORDER BY rank, id LIMIT 1
) ch ON TRUE
WHERE %(after_id)s::bigint IS NULL
   OR (coalesce(m.message_date, '1900-01-01 00:00+00'), m.id) < (%(after_date)s::timestamptz, %(after_id)s::bigint)
ORDER BY coalesce(m.message_date, '1900-01-01 00:00+00') DESC, m.id DESC
LIMIT %(limit)s;

-- name: dashboard_persons_brief
-- Label, cover, counts of the persons %(person_ids)s, each followed to the person it was
-- merged into (person_id is the one asked for, id the one that is now).
SELECT asked.id AS person_id, t.id, t.label, t.label_is_manual, t.hidden, t.topic_id,
       (SELECT count(*) FROM face_embeddings f WHERE f.topic_id = t.id) AS faces,
       (SELECT f.crop_jpeg FROM face_embeddings f WHERE f.topic_id = t.id
        ORDER BY f.id = t.cover_face_id DESC, f.low_quality, f.quality_score DESC, f.id LIMIT 1) AS cover
FROM telegram_topics asked
JOIN telegram_topics t ON t.id = coalesce(asked.merged_into, asked.id)
WHERE asked.id = ANY(%(person_ids)s::integer[]);

-- ---------------------------------------------------------------------------------------------
-- What a correction will change (shown before the operator confirms it)

-- name: dashboard_merge_preview
-- Merging %(absorbed_id)s into %(survivor_id)s: its posts not sent yet (cancelled), its faces,
-- and the media items that become due in the survivor's topic (those the survivor has posted
-- or due already are not posted again; nothing becomes due in a hidden survivor).
SELECT
    (SELECT count(*) FROM uploaded_media
     WHERE topic_id = %(absorbed_id)s AND status IN ('pending', 'failed')) AS cancelled,
    (SELECT count(*) FROM face_embeddings WHERE topic_id = %(absorbed_id)s) AS faces,
    (SELECT count(*) FROM (
        SELECT media_item_id FROM uploaded_media
        WHERE topic_id = %(absorbed_id)s AND status <> 'cancelled' AND media_item_id IS NOT NULL
        UNION
        SELECT media_item_id FROM face_embeddings
        WHERE topic_id = %(absorbed_id)s AND media_item_id IS NOT NULL
     ) x
     WHERE NOT (SELECT hidden FROM telegram_topics WHERE id = %(survivor_id)s)
       AND NOT EXISTS (SELECT 1 FROM uploaded_media u
                       WHERE u.topic_id = %(survivor_id)s AND u.media_item_id = x.media_item_id
                         AND u.status <> 'cancelled')) AS new_posts;

-- name: dashboard_move_preview
-- Moving faces %(face_ids)s out of person %(person_id)s (into %(target_id)s, NULL if none or a
-- new person): the posts of the person that lose their last face there (posted or being sent:
-- deleted from its topic; not sent: cancelled), the faces it keeps, and the media items that
-- become due in the target's topic (all of them for a new person).
WITH moving AS (
    SELECT id, media_item_id FROM face_embeddings
    WHERE id = ANY(%(face_ids)s::bigint[]) AND topic_id = %(person_id)s
), orphaned AS (
    SELECT DISTINCT m.media_item_id FROM moving m
    WHERE m.media_item_id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM face_embeddings f
                      WHERE f.topic_id = %(person_id)s AND f.media_item_id = m.media_item_id
                        AND NOT (f.id = ANY(%(face_ids)s::bigint[])))
)
SELECT
    (SELECT count(*) FROM moving) AS faces,
    (SELECT count(*) FROM face_embeddings WHERE topic_id = %(person_id)s) - (SELECT count(*) FROM moving)
        AS faces_left,
    (SELECT count(*) FROM uploaded_media u JOIN orphaned o ON o.media_item_id = u.media_item_id
     WHERE u.topic_id = %(person_id)s AND u.status IN ('posted', 'sending')) AS deleted,
    (SELECT count(*) FROM uploaded_media u JOIN orphaned o ON o.media_item_id = u.media_item_id
     WHERE u.topic_id = %(person_id)s AND u.status IN ('pending', 'failed')) AS cancelled,
    (SELECT count(DISTINCT m.media_item_id) FROM moving m
     WHERE m.media_item_id IS NOT NULL
       AND NOT coalesce((SELECT hidden FROM telegram_topics WHERE id = %(target_id)s), FALSE)
       AND NOT EXISTS (SELECT 1 FROM uploaded_media u
                       WHERE u.topic_id = %(target_id)s AND u.media_item_id = m.media_item_id
                         AND u.status <> 'cancelled')) AS new_posts;

-- name: dashboard_hide_preview
-- Hiding person %(person_id)s cancels its posts not sent yet; unhiding makes due again what
-- hiding cancelled (noted %(hidden_reason)s) and the media of faces that joined meanwhile.
SELECT
    (SELECT count(*) FROM uploaded_media
     WHERE topic_id = %(person_id)s AND status IN ('pending', 'failed')) AS cancelled,
    (SELECT count(*) FROM (
        SELECT media_item_id FROM uploaded_media
        WHERE topic_id = %(person_id)s AND status = 'cancelled' AND last_error = %(hidden_reason)s
        UNION
        SELECT f.media_item_id FROM face_embeddings f
        WHERE f.topic_id = %(person_id)s AND f.media_item_id IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM uploaded_media u
                          WHERE u.topic_id = f.topic_id AND u.media_item_id = f.media_item_id
                            AND u.status <> 'cancelled')
     ) x) AS resumed;

-- ---------------------------------------------------------------------------------------------
-- Review

-- name: dashboard_merge_suggestions
-- Open "maybe the same person" offers: most faces agreeing first (suggestions.py), then those
-- made while matching and not yet counted by a pass, most alike first.
SELECT id, person_a, person_b, score, agreeing, faces, created_at
FROM merge_suggestions WHERE status = 'open'
ORDER BY agreeing DESC NULLS LAST, score DESC, id
LIMIT %(limit)s;

-- name: dashboard_review_faces
-- Faces waiting for the operator (one per video track: the track is answered as a whole),
-- oldest first, %(limit)s after the face whose cursor_* columns are the after_* parameters (all NULL:
-- the first page; keyset, not OFFSET), with their candidates as the matcher saw them and the
-- ids of their unit.
SELECT r.id, r.crop_jpeg, r.quality_score, r.match_similarity, r.review_candidates,
       r.source_chat_id, r.source_message_id, r.media_item_id, r.frame_time,
       r.detection_timestamp, r.unit_ids, ch.chat_title, ch.chat_username,
       coalesce(r.detection_timestamp, '3000-01-01 00:00+00') AS cursor_time, r.id AS cursor_id
FROM (
    SELECT f.*, array_agg(f.id) OVER whole AS unit_ids, row_number() OVER best AS rank
    FROM face_embeddings f
    WHERE f.state = 'review'
    WINDOW whole AS (PARTITION BY f.media_item_id, coalesce(f.track_id::bigint, -f.id)),
           best AS (whole ORDER BY f.quality_score DESC, f.id)
) r
LEFT JOIN LATERAL (
    SELECT chat_title, chat_username FROM (
        SELECT c.chat_title, c.chat_username, 0 AS rank, c.id FROM scan_checkpoints c
        WHERE c.chat_id = r.source_chat_id
        UNION ALL   -- a chat known from an export only: its name there
        SELECT i.chat_title, NULL, 1, 0 FROM imported_chats i WHERE i.chat_id = r.source_chat_id
    ) known ORDER BY rank, id LIMIT 1
) ch ON TRUE
WHERE r.rank = 1
  AND (%(after_id)s::bigint IS NULL
       OR (coalesce(r.detection_timestamp, '3000-01-01 00:00+00'), r.id)
          > (%(after_time)s::timestamptz, %(after_id)s::bigint))
ORDER BY coalesce(r.detection_timestamp, '3000-01-01 00:00+00'), r.id
LIMIT %(limit)s;

-- name: dashboard_review_total
SELECT count(DISTINCT (media_item_id, coalesce(track_id::bigint, -id)))
FROM face_embeddings WHERE state = 'review';

-- ---------------------------------------------------------------------------------------------
-- Search by photo

-- name: dashboard_engine
-- The face engine that made the stored embeddings (none before the first face is stored: the
-- record binds only then).
SELECT engine, dimension FROM face_engine WHERE EXISTS (SELECT 1 FROM face_embeddings);

-- name: dashboard_search_ef
-- HNSW candidates per search for the rest of this transaction (must be at least the k below).
SELECT set_config('hnsw.ef_search', %(ef_search)s, true);

-- name: dashboard_nearest_persons
-- The persons (followed through merges) among the %(k)s faces of persons nearest to
-- %(embedding)s, best similarity first, at most %(persons)s. "Of persons" is inside the index
-- scan (iterative, database.SESSION_SETTINGS): pending faces near the photo take no place.
-- For 512-d embeddings the distance is rewritten to the halfvec index's (Queries.for_dimension).
SELECT coalesce(t.merged_into, t.id) AS person_id, max(n.similarity) AS similarity,
       count(*) AS near_faces
FROM (
    SELECT topic_id, 1 - (embedding <=> %(embedding)s) AS similarity
    FROM face_embeddings
    WHERE topic_id IS NOT NULL
    ORDER BY embedding <=> %(embedding)s
    LIMIT %(k)s
) n
JOIN telegram_topics t ON t.id = n.topic_id
GROUP BY 1
ORDER BY 2 DESC
LIMIT %(persons)s;

-- name: dashboard_labels
-- The labels of the persons %(person_ids)s (merged or not), and their topics' titles on
-- Telegram now, for describing actions.
SELECT id, label, topic_title FROM telegram_topics WHERE id = ANY(%(person_ids)s::integer[]);


-- name: dashboard_chosen_cover
-- The face the operator chose as person %(person_id)s's cover (no row: the automatic one).
SELECT cover_face_id FROM telegram_topics
WHERE id = %(person_id)s AND cover_is_manual AND cover_face_id IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- Audit log (dashboard_pages/audit.py)

-- name: dashboard_audit_record
-- One change made on the dashboard, in the transaction of the change itself.
INSERT INTO dashboard_audit (action, summary, details)
VALUES (%(action)s, %(summary)s, %(details)s)
RETURNING id;

-- name: dashboard_audit_recent
-- The newest %(limit)s changes made on the dashboard.
SELECT id, at, actor, action, summary, details FROM dashboard_audit ORDER BY id DESC LIMIT %(limit)s;

-- name: dashboard_audit_total
SELECT count(*) FROM dashboard_audit;
