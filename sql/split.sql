-- Splitting a person into look-alike groups (dashboard_pages/split.py).

-- name: split_person_faces
-- The best %(limit)s faces of person %(person_id)s with their embeddings and crops, best first.
SELECT id, embedding, crop_jpeg FROM face_embeddings
WHERE topic_id = %(person_id)s
ORDER BY low_quality, quality_score DESC, id
LIMIT %(limit)s;
