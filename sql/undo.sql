-- Undoing the operator's corrections (undo.py): the rows a correction may touch, read before and
-- after it as JSON, and written back from that JSON. Rows travel as to_jsonb(row) and come back
-- through jsonb_populate_recordset, so a column added later is carried without a change here.

-- ---------------------------------------------------------------------------------------------
-- Snapshots

-- name: undo_snap_persons
-- Persons %(person_ids)s and every person merged into one of them.
SELECT t.id, to_jsonb(t) FROM telegram_topics t
WHERE t.id = ANY(%(person_ids)s::integer[]) OR t.merged_into = ANY(%(person_ids)s::integer[]);

-- name: undo_snap_faces
-- Where the faces %(face_ids)s and the faces of persons %(person_ids)s are (not their pictures).
SELECT f.id, jsonb_build_object('id', f.id, 'topic_id', f.topic_id, 'state', f.state,
                                'assigned_by', f.assigned_by, 'match_similarity', f.match_similarity,
                                'review_candidates', f.review_candidates)
FROM face_embeddings f
WHERE f.id = ANY(%(face_ids)s::bigint[]) OR f.topic_id = ANY(%(person_ids)s::integer[]);

-- name: undo_snap_rejections
SELECT r.face_id, r.topic_id, to_jsonb(r) FROM face_rejections r
WHERE r.face_id = ANY(%(face_ids)s::bigint[]) OR r.topic_id = ANY(%(person_ids)s::integer[]);

-- name: undo_snap_suggestions
SELECT s.id, to_jsonb(s) FROM merge_suggestions s
WHERE s.id = ANY(%(suggestion_ids)s::bigint[])
   OR s.person_a = ANY(%(person_ids)s::integer[]) OR s.person_b = ANY(%(person_ids)s::integer[]);

-- name: undo_snap_uploads
SELECT u.id, to_jsonb(u) FROM uploaded_media u WHERE u.topic_id = ANY(%(person_ids)s::integer[]);

-- name: undo_last_action
SELECT COALESCE(max(id), 0) FROM dashboard_actions;

-- name: undo_actions_recorded
-- The requests for Telegram recorded in this transaction after request %(after_id)s (now() is
-- the transaction's start, the default of created_at).
SELECT id FROM dashboard_actions WHERE id > %(after_id)s AND created_at = now() ORDER BY id;

-- name: undo_suggestion_persons
SELECT person_a, person_b FROM merge_suggestions WHERE id = ANY(%(suggestion_ids)s::bigint[]);

-- name: undo_face_persons
SELECT DISTINCT topic_id FROM face_embeddings
WHERE id = ANY(%(face_ids)s::bigint[]) AND topic_id IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- Undo

-- name: undo_lock_persons
-- The persons %(person_ids)s as they are now, locked in id order.
SELECT t.id, to_jsonb(t) FROM telegram_topics t
WHERE t.id = ANY(%(person_ids)s::integer[]) ORDER BY t.id FOR UPDATE;

-- name: undo_lock_faces
SELECT id, topic_id, state FROM face_embeddings
WHERE id = ANY(%(face_ids)s::bigint[]) ORDER BY id FOR UPDATE;

-- name: undo_lock_uploads
SELECT u.id, to_jsonb(u) FROM uploaded_media u
WHERE u.id = ANY(%(upload_ids)s::bigint[]) ORDER BY u.id FOR UPDATE;

-- name: undo_lock_suggestions
SELECT id, status FROM merge_suggestions WHERE id = ANY(%(suggestion_ids)s::bigint[]) ORDER BY id FOR UPDATE;

-- name: undo_drop_actions
-- The requests %(action_ids)s not applied yet, which the undo makes pointless: deleted, so that
-- Telegram never hears of them. One the daemon is applying right now is locked by it: the delete
-- waits for it (under a lock_timeout, undo.py), then finds it no longer pending. (The dashboard's
-- role cannot lock rows of the queue it only adds to; deleting is its lock.)
DELETE FROM dashboard_actions WHERE id = ANY(%(action_ids)s::bigint[]) AND status = 'pending' RETURNING id;

-- name: undo_applied_actions
-- The requests %(action_ids)s left after undo_drop_actions: the daemon is done with them.
SELECT id, action, payload, status FROM dashboard_actions WHERE id = ANY(%(action_ids)s::bigint[]) ORDER BY id;

-- name: undo_lock_timeout
-- lock_timeout %(timeout)s until the transaction ends; returns the one before.
SELECT current_setting('lock_timeout') AS previous, set_config('lock_timeout', %(timeout)s, true);

-- name: undo_insert_persons
INSERT INTO telegram_topics SELECT * FROM jsonb_populate_recordset(NULL::telegram_topics, %(rows)s);

-- name: undo_restore_persons
-- What a correction changes about a person, back to %(rows)s (counts and cover: persons_refresh).
UPDATE telegram_topics t
SET label = r.label, label_is_manual = r.label_is_manual, hidden = r.hidden,
    merged_into = r.merged_into, cover_face_id = r.cover_face_id, cover_is_manual = r.cover_is_manual
FROM jsonb_populate_recordset(NULL::telegram_topics, %(rows)s) r
WHERE t.id = r.id;

-- name: undo_restore_faces
UPDATE face_embeddings f
SET topic_id = r.topic_id, state = r.state, assigned_by = r.assigned_by,
    match_similarity = r.match_similarity, review_candidates = r.review_candidates
FROM jsonb_to_recordset(%(rows)s) AS r(id bigint, topic_id integer, state text, assigned_by text,
                                       match_similarity real, review_candidates jsonb)
WHERE f.id = r.id;

-- name: undo_delete_rejections
DELETE FROM face_rejections r USING jsonb_populate_recordset(NULL::face_rejections, %(rows)s) x
WHERE r.face_id = x.face_id AND r.topic_id = x.topic_id;

-- name: undo_insert_rejections
INSERT INTO face_rejections SELECT * FROM jsonb_populate_recordset(NULL::face_rejections, %(rows)s)
ON CONFLICT DO NOTHING;

-- name: undo_insert_suggestions
INSERT INTO merge_suggestions SELECT * FROM jsonb_populate_recordset(NULL::merge_suggestions, %(rows)s)
ON CONFLICT DO NOTHING;

-- name: undo_restore_suggestions
UPDATE merge_suggestions s SET status = r.status, decided_at = r.decided_at
FROM jsonb_populate_recordset(NULL::merge_suggestions, %(rows)s) r
WHERE s.id = r.id;

-- name: undo_insert_uploads
INSERT INTO uploaded_media SELECT * FROM jsonb_populate_recordset(NULL::uploaded_media, %(rows)s)
ON CONFLICT DO NOTHING;

-- name: undo_restore_uploads
UPDATE uploaded_media u
SET status = r.status, attempts = r.attempts, run_after = r.run_after, random_id = r.random_id,
    last_error = r.last_error, uploaded_message_id = r.uploaded_message_id, uploaded_at = r.uploaded_at
FROM jsonb_populate_recordset(NULL::uploaded_media, %(rows)s) r
WHERE u.id = r.id;

-- name: undo_cancel_uploads
-- Posts the undone change made due and that are not on Telegram: cancelled, as a move cancels the
-- posts it withdraws (kept, not deleted: the dashboard's role never deletes posts).
UPDATE uploaded_media SET status = 'cancelled', last_error = 'withdrawn by an undo'
WHERE id = ANY(%(upload_ids)s::bigint[]) AND status IN ('pending', 'failed', 'cancelled');

-- name: undo_due_again
-- Posts that a done delete_posts took off Telegram: due again (posted anew, with a new random_id).
UPDATE uploaded_media
SET status = 'pending', attempts = 0, run_after = now(), last_error = NULL,
    random_id = (random() * 9.0e18)::bigint, uploaded_message_id = NULL, uploaded_at = NULL
WHERE id = ANY(%(upload_ids)s::bigint[]) AND status = 'cancelled';

-- name: undo_drop_person
-- A person the undone correction made: gone again, unless it has a topic on Telegram by now
-- (or a post there), which needs it.
DELETE FROM telegram_topics t
WHERE t.id = %(person_id)s AND t.topic_id IS NULL
  AND NOT EXISTS (SELECT 1 FROM face_embeddings f WHERE f.topic_id = t.id)
  AND NOT EXISTS (SELECT 1 FROM uploaded_media u
                  WHERE u.topic_id = t.id AND u.status IN ('posted', 'sending'))
  AND NOT EXISTS (SELECT 1 FROM telegram_topics m WHERE m.merged_into = t.id)
RETURNING id;

-- name: undo_hide_person
UPDATE telegram_topics SET hidden = TRUE WHERE id = %(person_id)s RETURNING id;

-- name: undo_entry
-- Audit entry %(audit_id)s and whether it was undone already. Read under persons_lock (two undos
-- of one change wait for each other; the dashboard's role cannot lock audit rows: the log is
-- append-only for it).
SELECT a.id, a.action, a.summary, a.details,
       (SELECT u.id FROM dashboard_audit u
        WHERE u.action = 'undo' AND u.details->>'undoes' = a.id::text LIMIT 1) AS undone_by
FROM dashboard_audit a WHERE a.id = %(audit_id)s;

-- name: undo_undoable
-- Which of the audit entries %(audit_ids)s can still be offered an undo (kept its undo data and
-- has not been undone).
SELECT a.id FROM dashboard_audit a
WHERE a.id = ANY(%(audit_ids)s::bigint[]) AND a.details ? 'undo'
  AND NOT EXISTS (SELECT 1 FROM dashboard_audit u
                  WHERE u.action = 'undo' AND u.details->>'undoes' = a.id::text);

-- name: undo_later_faces
-- Faces the matcher placed (not the operator) in persons %(person_ids)s since the change: not
-- among %(members)s, the faces those persons had right after it. Each with the person of
-- %(candidate_ids)s whose other faces it is most like as a whole (average linkage: its inner
-- product with their mean, the matcher's joining rule), or NULL where none has a face.
WITH later AS (
    SELECT f.id, f.topic_id, f.media_item_id, f.embedding FROM face_embeddings f
    WHERE f.topic_id = ANY(%(person_ids)s::integer[]) AND NOT (f.id = ANY(%(members)s::bigint[]))
      AND f.state = 'assigned' AND f.assigned_by IS DISTINCT FROM 'operator'
    FOR UPDATE OF f
), means AS (
    SELECT f.topic_id AS person_id, avg(f.embedding) AS mean FROM face_embeddings f
    WHERE f.topic_id = ANY(%(candidate_ids)s::integer[]) AND f.id NOT IN (SELECT id FROM later)
    GROUP BY f.topic_id
)
SELECT l.id, l.topic_id, l.media_item_id, best.person_id, best.linkage
FROM later l LEFT JOIN LATERAL (
    SELECT m.person_id, -(l.embedding <#> m.mean) AS linkage FROM means m
    ORDER BY l.embedding <#> m.mean, m.person_id LIMIT 1
) best ON TRUE
ORDER BY l.id;

-- name: undo_rehome_faces
-- Faces %(face_ids)s into persons %(person_ids)s (NULL: the pending pool), as the matcher would
-- have placed them (assigned_by stays the matcher's: no operator fact is made).
UPDATE face_embeddings f
SET topic_id = u.person_id, state = CASE WHEN u.person_id IS NULL THEN 'pending' ELSE 'assigned' END,
    assigned_by = CASE WHEN u.person_id IS NULL THEN NULL ELSE f.assigned_by END,
    match_similarity = u.similarity
FROM unnest(%(face_ids)s::bigint[], %(person_ids)s::integer[], %(similarities)s::real[])
     AS u(id, person_id, similarity)
WHERE f.id = u.id;
