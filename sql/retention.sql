-- Retention (retention.py, run by the daemon on a schedule): what is old enough to go.

-- name: retention_metrics
-- processing_metrics rows older than %(days)s days (the seed's cleanup_old_metrics(), with the
-- age a setting instead of 30 days).
DELETE FROM processing_metrics WHERE recorded_at < now() - make_interval(days => %(days)s);

-- name: retention_errors
-- Resolved errors older than %(days)s days: those whose job or post is not failed (any more).
-- The errors of work that is still failed stay, however old: the operator has to see them.
DELETE FROM processing_errors e
WHERE e.error_timestamp < now() - make_interval(days => %(days)s)
  AND NOT EXISTS (SELECT 1 FROM media_jobs j WHERE j.id = e.job_id AND j.status = 'failed')
  AND NOT (coalesce(e.error_context->>'upload_id', '') ~ '^[0-9]{1,18}$' AND EXISTS (
      SELECT 1 FROM uploaded_media u
      WHERE u.id = (e.error_context->>'upload_id')::bigint AND u.status = 'failed'));

-- name: retention_pending_lock
-- The identity matcher's lock on the pending pool: %(key)s is identity_matcher.PERSONS_LOCK.
SELECT pg_advisory_xact_lock(%(key)s);

-- name: retention_pending_faces
-- Pending faces (with their crops and embeddings) that met nobody in %(days)s days since they
-- were seen: they will not found a person now.
DELETE FROM face_embeddings
WHERE state = 'pending' AND detection_timestamp < now() - make_interval(days => %(days)s);
