-- The daemon's scheduled passes over persons (suggestions.py) and split offers (purity.py).

-- name: suggestions_person_faces
-- Every face of every visible person (faces follow merges: merged-away persons have none).
SELECT f.topic_id, f.embedding
FROM face_embeddings f JOIN telegram_topics t ON t.id = f.topic_id
WHERE t.merged_into IS NULL AND NOT t.hidden
ORDER BY f.topic_id, f.id;

-- name: suggestions_forbidden_pairs
-- Pairs never offered: seen together in one media item, or split by the operator (a face of one
-- was moved out of the other).
SELECT DISTINCT a.topic_id, b.topic_id
FROM face_embeddings a JOIN face_embeddings b
    ON b.media_item_id = a.media_item_id AND b.topic_id > a.topic_id
UNION
SELECT DISTINCT r.topic_id, f.topic_id
FROM face_rejections r JOIN face_embeddings f ON f.id = r.face_id
WHERE f.topic_id IS NOT NULL AND f.topic_id <> r.topic_id;

-- name: suggestions_withdraw
-- Open offers the pass did not find again (pairs %(person_a)s, %(person_b)s are found) go.
DELETE FROM merge_suggestions s
WHERE s.status = 'open'
  AND NOT EXISTS (SELECT 1 FROM unnest(%(person_a)s::integer[], %(person_b)s::integer[]) AS u(a, b)
                  WHERE u.a = s.person_a AND u.b = s.person_b);

-- name: suggestions_upsert
-- The pass's offers: new pairs are offered, open ones re-ranked, answered ones stay answered.
INSERT INTO merge_suggestions (person_a, person_b, score, agreeing, faces)
SELECT * FROM unnest(%(person_a)s::integer[], %(person_b)s::integer[], %(score)s::real[],
                     %(agreeing)s::integer[], %(faces)s::integer[])
ON CONFLICT (person_a, person_b) DO UPDATE
    SET score = EXCLUDED.score, agreeing = EXCLUDED.agreeing, faces = EXCLUDED.faces
    WHERE merge_suggestions.status = 'open'
RETURNING id;

-- name: suggestions_split_faces
-- The faces of every visible person with at least %(min_faces)s faces, by person (counted here:
-- the cached embedding_count may lag).
SELECT f.topic_id, f.id, f.embedding
FROM face_embeddings f JOIN telegram_topics t ON t.id = f.topic_id
WHERE t.merged_into IS NULL AND NOT t.hidden
  AND f.topic_id IN (SELECT topic_id FROM face_embeddings WHERE topic_id IS NOT NULL
                     GROUP BY topic_id HAVING count(*) >= %(min_faces)s)
ORDER BY f.topic_id, f.id;

-- name: suggestions_splits_known
-- Each person's latest split offer: (person, status, its face count then).
SELECT DISTINCT ON (person_id) person_id, status, person_faces
FROM split_suggestions ORDER BY person_id, id DESC;

-- name: suggestions_split_withdraw
DELETE FROM split_suggestions WHERE person_id = %(person_id)s AND status = 'open';

-- name: suggestions_split_offer
-- Offers (or updates the open offer of) a split of person %(person_id)s.
INSERT INTO split_suggestions (person_id, face_ids, person_faces, score)
VALUES (%(person_id)s, %(face_ids)s, %(person_faces)s, %(score)s)
ON CONFLICT (person_id) WHERE status = 'open' DO UPDATE
    SET face_ids = EXCLUDED.face_ids, person_faces = EXCLUDED.person_faces, score = EXCLUDED.score;

-- name: splits_for_update
SELECT person_id, face_ids, status FROM split_suggestions WHERE id = %(suggestion_id)s FOR UPDATE;

-- name: splits_faces_still_there
-- Those of the faces %(face_ids)s still in person %(person_id)s.
SELECT id FROM face_embeddings
WHERE topic_id = %(person_id)s AND id = ANY(%(face_ids)s::bigint[]) ORDER BY id;

-- name: splits_decide
UPDATE split_suggestions SET status = %(status)s, decided_at = now() WHERE id = %(suggestion_id)s;

-- name: dashboard_split_suggestions
-- Open split offers, the least agreeing groups first, with the person and both groups' crops.
SELECT s.id, s.person_id, s.face_ids, s.score, s.person_faces,
       t.label, t.hidden, t.topic_id,
       ARRAY(SELECT f.crop_jpeg FROM face_embeddings f
             WHERE f.topic_id = s.person_id AND f.id = ANY(s.face_ids) ORDER BY f.quality_score DESC
             LIMIT 6) AS split_crops,
       ARRAY(SELECT f.crop_jpeg FROM face_embeddings f
             WHERE f.topic_id = s.person_id AND NOT (f.id = ANY(s.face_ids))
             ORDER BY f.quality_score DESC LIMIT 6) AS kept_crops
FROM split_suggestions s JOIN telegram_topics t ON t.id = s.person_id
WHERE s.status = 'open' AND t.merged_into IS NULL
ORDER BY s.score, s.id
LIMIT %(limit)s;
