-- Review (dashboard_pages/review.py): what the operator compares before answering.

-- name: review_person_faces
-- Up to %(per_person)s best faces of each of the persons %(person_ids)s (not their covers: the
-- tile shows those already).
SELECT r.topic_id AS person_id, r.id, r.crop_jpeg
FROM (
    SELECT f.topic_id, f.id, f.crop_jpeg,
           row_number() OVER (PARTITION BY f.topic_id ORDER BY f.low_quality, f.quality_score DESC, f.id) AS rank
    FROM face_embeddings f JOIN telegram_topics t ON t.id = f.topic_id
    WHERE f.topic_id = ANY(%(person_ids)s::integer[]) AND f.crop_jpeg IS NOT NULL
      AND f.id IS DISTINCT FROM t.cover_face_id
) AS r
WHERE r.rank <= %(per_person)s
ORDER BY r.topic_id, r.rank;

-- name: review_photo
-- The whole photo face %(face_id)s was found in: the file it was analysed from (an export's
-- file stays where it is; a download is removed once analysed), the small copy kept at analysis
-- (media_previews) and the other faces in it.
SELECT m.media_type, (SELECT p.preview_jpeg FROM media_previews p WHERE p.media_item_id = m.id) AS preview,
       (SELECT j.staged_path FROM media_jobs j WHERE j.media_item_id = m.id AND j.staged_path IS NOT NULL
        ORDER BY j.id DESC LIMIT 1) AS path,
       (SELECT coalesce(array_agg(g.crop_jpeg ORDER BY g.id), ARRAY[]::bytea[]) FROM face_embeddings g
        WHERE g.media_item_id = m.id AND g.id <> f.id AND g.crop_jpeg IS NOT NULL) AS other_faces
FROM face_embeddings f JOIN media_items m ON m.id = f.media_item_id
WHERE f.id = %(face_id)s;
