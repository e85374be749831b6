-- What `main.py health` judges (health.py): the daemon gathers these facts with every heartbeat.

-- name: health_accounts
SELECT id, phone_number, status, last_error FROM telegram_accounts ORDER BY id;

-- name: health_queue
-- Jobs due now, and when a job last finished (done, failed or skipped) by any process's metrics.
SELECT (SELECT count(*) FROM media_jobs WHERE status IN ('queued', 'staged') AND run_after <= now()) AS due,
       (SELECT extract(epoch FROM max(recorded_at))::float FROM processing_metrics
        WHERE metric_name IN ('jobs_done', 'jobs_failed', 'jobs_skipped')) AS progress_at;

-- name: health_posts
-- Posts waiting or failed, the last successful post, and the first post error since then.
WITH last AS (SELECT max(uploaded_at) AS at FROM uploaded_media WHERE status = 'posted')
SELECT (SELECT count(*) FROM uploaded_media WHERE status IN ('pending', 'sending', 'failed')) AS waiting,
       (SELECT extract(epoch FROM at)::float FROM last) AS posted_at,
       (SELECT extract(epoch FROM min(error_timestamp))::float FROM processing_errors
        WHERE error_context->>'stage' = 'upload'
          AND error_timestamp > coalesce((SELECT at FROM last), '-infinity'::timestamptz)) AS failing_since;
