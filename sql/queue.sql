-- The durable job queue (media_jobs) and the media items it deduplicates on (media_items).
-- Used by processing_queue.py and exports.py. A job is leased by one process at a time:
-- lease_owner names the process, lease_expires_at is pushed forward by its heartbeat; a job
-- whose lease ran out (its process died) is claimable again. `claims` counts the claims that
-- were never settled: every write that hands a job back (retry, wait, release, staged) gives its
-- claim back, so claims grows only when the process working on the job died (a crash, kill -9,
-- out of memory), never because the job waited for an outage. Every write that finishes or
-- reschedules a job checks that the writer still holds the lease, so a process that lost its
-- lease can never overwrite the work of the one that took the job over.

-- name: queue_claim_staged
-- Lease up to %(limit)s downloaded jobs for analysis. A job waits while another job with the
-- same media is being analysed (it is then finished by deduplication instead of analysed twice).
WITH picked AS (
    SELECT j.id
    FROM media_jobs j
    WHERE j.status = 'staged'
      AND j.run_after <= now()
      AND (j.lease_expires_at IS NULL OR j.lease_expires_at < now())
      AND NOT EXISTS (
          SELECT 1 FROM media_jobs twin
          WHERE twin.media_key = j.media_key AND twin.id <> j.id
            AND twin.status = 'staged' AND twin.lease_expires_at > now())
    ORDER BY j.run_after, j.id
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE media_jobs j
SET lease_owner = %(owner)s,
    lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
    claims = j.claims + 1,
    updated_at = now()
FROM picked
WHERE j.id = picked.id
RETURNING j.*;

-- name: queue_claim_downloads
-- Lease up to %(limit)s jobs still to be downloaded, of the accounts %(account_ids)s that this
-- process holds (and whose clients are connected), skipping accounts in a flood wait and accounts
-- that are not active (logged out, banned, paused): their jobs wait, untouched, until the account
-- is back. A job waits while another job with the same
-- media is being downloaded or waits for analysis: the media is fetched once.
WITH picked AS (
    SELECT j.id
    FROM media_jobs j
    JOIN telegram_accounts a ON a.id = j.account_id
    WHERE j.status = 'queued'
      AND j.account_id = ANY(%(account_ids)s)
      AND a.status = 'active'
      AND j.run_after <= now()
      AND (j.lease_expires_at IS NULL OR j.lease_expires_at < now())
      AND (a.flood_wait_until IS NULL OR a.flood_wait_until < now())
      AND NOT EXISTS (
          SELECT 1 FROM media_jobs twin
          WHERE twin.media_key = j.media_key AND twin.id <> j.id
            AND (twin.status = 'staged'
                 OR (twin.status = 'queued' AND twin.lease_expires_at > now())))
    ORDER BY j.run_after, j.id
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE media_jobs j
SET lease_owner = %(owner)s,
    lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
    claims = j.claims + 1,
    updated_at = now()
FROM picked
WHERE j.id = picked.id
RETURNING j.*;

-- name: queue_staged_backlog
-- Jobs downloaded and waiting for analysis (any process): downloads pause when it is large, so
-- the staging area does not fill the disk faster than the workers empty it.
SELECT count(*) FROM media_jobs WHERE status = 'staged';

-- name: queue_heartbeat
-- Extend the leases of the jobs %(job_ids)s this process still holds; returns those it holds.
UPDATE media_jobs
SET lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
WHERE id = ANY(%(job_ids)s) AND lease_owner = %(owner)s AND status IN ('queued', 'staged')
RETURNING id;

-- name: queue_lock_own_job
-- Inside the transaction that finishes a job: lock it, if this process still holds its lease.
SELECT id FROM media_jobs
WHERE id = %(job_id)s AND lease_owner = %(owner)s AND status IN ('queued', 'staged')
FOR UPDATE;

-- name: queue_mark_staged
-- The job's media is downloaded to %(staged_path)s: any worker may analyse it now. The attempt
-- count starts again: analysing has its own budget of retries.
UPDATE media_jobs
SET status = 'staged', staged_path = %(staged_path)s, staged_owned = TRUE,
    lease_owner = NULL, lease_expires_at = NULL, attempts = 0, claims = greatest(claims - 1, 0),
    run_after = now(), last_error = NULL, updated_at = now()
WHERE id = %(job_id)s AND lease_owner = %(owner)s AND status = 'queued'
RETURNING id;

-- name: queue_requeue_download
-- The job's downloaded file is missing (a worker without the shared staging area, or a lost
-- volume): back to 'queued', to be downloaded again by the process holding its account.
UPDATE media_jobs
SET status = 'queued', staged_path = NULL, lease_owner = NULL, lease_expires_at = NULL,
    claims = greatest(claims - 1, 0), run_after = now(), last_error = 'the downloaded file was missing',
    updated_at = now()
WHERE id = %(job_id)s AND lease_owner = %(owner)s AND status = 'staged'
RETURNING id;

-- name: queue_finish_job
-- Final: status %(status)s ('done' or 'skipped'), the media item it produced, and a note.
UPDATE media_jobs
SET status = %(status)s, media_item_id = %(media_item_id)s, last_error = %(note)s,
    lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), updated_at = now()
WHERE id = %(job_id)s AND lease_owner = %(owner)s AND status IN ('queued', 'staged')
RETURNING id;

-- name: queue_fail_job
-- Final: the job failed for good with %(error)s.
UPDATE media_jobs
SET status = 'failed', last_error = %(error)s, attempts = attempts + %(counted)s,
    media_item_id = coalesce(%(media_item_id)s, media_item_id),
    lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), updated_at = now()
WHERE id = %(job_id)s AND lease_owner = %(owner)s AND status IN ('queued', 'staged')
RETURNING id;

-- name: queue_retry_job
-- Give the job back to try again after %(delay)s seconds. %(counted)s is 1 when this was a
-- failed attempt and 0 when the job only had to wait (a flood wait, an outage). Either way the
-- process settled it: its claim is given back.
UPDATE media_jobs
SET run_after = now() + make_interval(secs => %(delay)s), last_error = %(error)s,
    attempts = attempts + %(counted)s, claims = greatest(claims - 1, 0),
    lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
WHERE id = %(job_id)s AND lease_owner = %(owner)s AND status IN ('queued', 'staged')
RETURNING id;

-- name: queue_release_jobs
-- Shutting down: give back the jobs %(job_ids)s this process holds, to be claimed at once by
-- whoever runs next. Their claim does not count against the job.
UPDATE media_jobs
SET lease_owner = NULL, lease_expires_at = NULL, claims = greatest(claims - 1, 0), updated_at = now()
WHERE id = ANY(%(job_ids)s) AND lease_owner = %(owner)s AND status IN ('queued', 'staged')
RETURNING id;

-- name: queue_pause_account
-- A flood wait of %(seconds)s on account %(account_id)s: its downloads pause (only its own).
UPDATE telegram_accounts
SET flood_wait_until = greatest(coalesce(flood_wait_until, now()),
                                now() + make_interval(secs => %(seconds)s))
WHERE id = %(account_id)s;

-- name: queue_record_error
-- One row of processing_errors, for the dashboard's error list.
INSERT INTO processing_errors (error_type, error_message, error_context, job_id)
VALUES (%(error_type)s, %(error_message)s, %(context)s, %(job_id)s);

-- name: queue_media_item_by_key
-- The media item with key %(media_key)s, if any.
SELECT id, status FROM media_items WHERE media_key = %(media_key)s;

-- name: queue_ensure_media_item
-- Create the media item for a job's media unless it exists (the first source message wins).
INSERT INTO media_items (media_key, media_type, mime_type, file_size, source_chat_id,
                         source_message_id, message_date)
VALUES (%(media_key)s, %(media_type)s, %(mime_type)s, %(file_size)s, %(source_chat_id)s,
        %(source_message_id)s, %(message_date)s)
ON CONFLICT (media_key) DO NOTHING;

-- name: queue_lock_media_item
-- Lock the media item with key %(media_key)s for this transaction: jobs carrying the same media
-- finish one after the other, so only the first stores faces.
SELECT id, status FROM media_items WHERE media_key = %(media_key)s FOR UPDATE;

-- name: queue_mark_media_analysed
UPDATE media_items SET status = 'analysed', face_count = %(face_count)s, analysed_at = now()
WHERE id = %(media_item_id)s;

-- name: queue_store_preview
-- The small copy of the photo media item %(media_item_id)s (migrations/0009), kept only if a face
-- of it was stored (a photo nobody is found in needs no picture), in the faces' transaction.
INSERT INTO media_previews (media_item_id, preview_jpeg)
SELECT %(media_item_id)s, %(preview_jpeg)s
WHERE EXISTS (SELECT 1 FROM face_embeddings WHERE media_item_id = %(media_item_id)s)
ON CONFLICT (media_item_id) DO UPDATE SET preview_jpeg = EXCLUDED.preview_jpeg, created_at = now();

-- name: queue_mark_media_failed
-- The media itself is bad (not readable as a photo or video): other copies need no analysis.
UPDATE media_items SET status = 'failed', analysed_at = now() WHERE id = %(media_item_id)s;

-- name: queue_depth
-- Jobs waiting, by status: queued (to download) and staged (to analyse).
SELECT status, count(*) AS jobs FROM media_jobs WHERE status IN ('queued', 'staged') GROUP BY status;

-- name: queue_job_statuses
-- The status of each of the jobs %(job_ids)s (those that exist).
SELECT id, status FROM media_jobs WHERE id = ANY(%(job_ids)s);

-- name: queue_staging_owners
-- For the staging cleanup: of the jobs %(job_ids)s (those that exist), whether it is over, the
-- file the daemon downloaded for it (staged_owned: not an operator's export file), whether it is a
-- Telegram download, and whether a process holds it now.
SELECT id, status IN ('done', 'failed', 'skipped') AS finished, staged_owned, staged_path,
       account_id IS NOT NULL AS downloaded, coalesce(lease_expires_at > now(), FALSE) AS leased
FROM media_jobs WHERE id = ANY(%(job_ids)s);

-- name: queue_record_metrics
-- Counters of this process since its last report, one processing_metrics row each.
INSERT INTO processing_metrics (metric_name, metric_value)
SELECT name, value FROM unnest(%(names)s::text[], %(values)s::bigint[]) AS m(name, value);

-- name: queue_gauge_lock
-- Serialises the queue-depth gauge between processes (key: "queue_gauge").
SELECT pg_advisory_xact_lock(7022637358420063589);

-- name: queue_record_depth
-- The queue depth gauges (queue_depth, queue_queued, queue_staged), written by one process a
-- minute whatever the number of processes: skipped if any process wrote them in the last 50 s.
INSERT INTO processing_metrics (metric_name, metric_value)
SELECT m.name, m.value
FROM (
    SELECT 'queue_depth' AS name, count(*) FILTER (WHERE status IN ('queued', 'staged')) AS value
    FROM media_jobs
    UNION ALL
    SELECT 'queue_queued', count(*) FILTER (WHERE status = 'queued') FROM media_jobs
    UNION ALL
    SELECT 'queue_staged', count(*) FILTER (WHERE status = 'staged') FROM media_jobs
) m
WHERE NOT EXISTS (
    SELECT 1 FROM processing_metrics
    WHERE metric_name = 'queue_depth' AND recorded_at > now() - interval '50 seconds');

-- name: export_insert_job
-- A job for one media file of a Telegram Desktop export: already downloaded (staged), the file
-- is the operator's (never deleted). A message already known (imported before, or seen through
-- the API) is left as it is. Returns the id of a new job only.
INSERT INTO media_jobs (source_chat_id, source_message_id, origin, media_key, media_type,
                        mime_type, file_size, message_date, status, staged_path, staged_owned)
VALUES (%(source_chat_id)s, %(source_message_id)s, 'export', %(media_key)s, %(media_type)s,
        %(mime_type)s, %(file_size)s, %(message_date)s, 'staged', %(staged_path)s, FALSE)
ON CONFLICT (source_chat_id, source_message_id, id_scope) DO NOTHING
RETURNING id;

-- name: export_job_ids
-- The jobs of the messages (%(chat_ids)s[i], %(message_ids)s[i]) and their status.
SELECT j.id, j.status, j.source_chat_id, j.source_message_id
FROM media_jobs j
JOIN unnest(%(chat_ids)s::bigint[], %(message_ids)s::bigint[]) AS m(chat_id, message_id)
  ON j.source_chat_id = m.chat_id AND j.source_message_id = m.message_id;

-- name: export_summary
-- What the archive holds after an import: persons, faces, and posts waiting for the hub.
SELECT
    (SELECT count(*) FROM telegram_topics WHERE merged_into IS NULL) AS persons,
    (SELECT count(*) FROM face_embeddings WHERE state = 'assigned') AS faces,
    (SELECT count(*) FROM face_embeddings WHERE state = 'pending') AS pending_faces,
    (SELECT count(*) FROM uploaded_media WHERE status = 'pending') AS pending_posts;
