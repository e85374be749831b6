-- main.py recluster (recluster.py): every automatic assignment decided again.

-- name: recluster_lock_persons
-- Every person row, locked until the recluster commits: workers joining a face to a person
-- (persons_claim) wait, so the plan is made and written on faces nobody changes meanwhile.
SELECT id FROM telegram_topics ORDER BY id FOR UPDATE;

-- name: recluster_faces
-- Every face in a person, the pending pool or review, with what makes it an operator fact:
-- placed by the operator, a person's manually chosen cover, a face of a hidden person, or in
-- review (the operator's to decide). Persons followed through merges; ids in arrival order.
SELECT f.id, f.media_item_id, f.track_id, f.low_quality, f.embedding,
       COALESCE(t.merged_into, t.id) AS person_id, f.state,
       (f.state = 'review' OR f.assigned_by = 'operator' OR COALESCE(s.hidden, FALSE)
        OR EXISTS (SELECT 1 FROM telegram_topics c
                   WHERE c.cover_is_manual AND c.cover_face_id = f.id)) AS fixed,
       ARRAY(SELECT COALESCE(rt.merged_into, rt.id) FROM face_rejections r
             JOIN telegram_topics rt ON rt.id = r.topic_id WHERE r.face_id = f.id) AS rejected
FROM face_embeddings f
LEFT JOIN telegram_topics t ON t.id = f.topic_id
LEFT JOIN telegram_topics s ON s.id = COALESCE(t.merged_into, t.id)
WHERE f.state IN ('assigned', 'pending', 'review')
ORDER BY f.id;

-- name: recluster_persons
-- Labels of the persons, for the report.
SELECT id, label FROM telegram_topics WHERE merged_into IS NULL ORDER BY id;

-- name: recluster_place
-- Faces %(face_ids)s decided again: their person (NULL unless 'assigned'), state, who decided,
-- linkage and review candidates, all given per face.
UPDATE face_embeddings f
SET topic_id = u.person_id, state = u.state, assigned_by = u.assigned_by,
    match_similarity = u.similarity, review_candidates = u.candidates
FROM unnest(%(face_ids)s::bigint[], %(person_ids)s::integer[], %(states)s::text[],
            %(assigned_by)s::text[], %(similarities)s::real[], %(candidates)s::jsonb[])
     AS u(id, person_id, state, assigned_by, similarity, candidates)
WHERE f.id = u.id;

-- name: recluster_cancelled_count
-- Posts withdrawn before they were sent (persons_withdraw_posts marks them so): counted before
-- and after the withdrawals, for the report.
SELECT count(*) FROM uploaded_media
WHERE status = 'cancelled' AND last_error = 'face moved out of this person';
