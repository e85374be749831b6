-- Optional notifications (notifications.py): what the operator must act on.

-- name: notify_accounts
-- Accounts no longer usable (logged out, banned, frozen, in error; not those the operator paused):
-- the notifier masks the phone number.
SELECT id, phone_number, status, last_error FROM telegram_accounts WHERE status NOT IN ('active', 'paused') ORDER BY id;

-- name: notify_counts
-- Faces waiting for review, and errors recorded in the last hour.
SELECT (SELECT count(*) FROM face_embeddings WHERE state = 'review') AS review,
       (SELECT count(*) FROM processing_errors WHERE error_timestamp > now() - interval '1 hour') AS errors_last_hour;
