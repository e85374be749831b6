-- Erasure: "forget this person" (erasure.py, `main.py forget`).

-- name: erasure_lock_person
-- Person %(person_id)s, locked for the erasure (not one merged away into another).
SELECT id, topic_id, label FROM telegram_topics
WHERE id = %(person_id)s AND merged_into IS NULL FOR UPDATE;

-- name: erasure_person_media
-- Every media item the person has a face in or a post of.
SELECT media_item_id FROM face_embeddings WHERE topic_id = %(person_id)s AND media_item_id IS NOT NULL
UNION
SELECT media_item_id FROM uploaded_media WHERE topic_id = %(person_id)s AND media_item_id IS NOT NULL;

-- name: erasure_delete_faces
-- The person's faces (embeddings, crops; their rejections by cascade), and the faces waiting for
-- review with the person among their candidates (they may well be its): how many, in `erased`.
-- A function (migrations/0007): the dashboard's role deletes faces this way only.
SELECT erase_person_faces(%(person_id)s) AS erased;

-- name: erasure_forget_person
-- What is left of the person is a hidden, nameless record: the topic actions need it, and the
-- dashboard shows it nowhere. Its merge and split suggestions go (a split names its faces).
WITH suggestions AS (
    DELETE FROM merge_suggestions WHERE person_a = %(person_id)s OR person_b = %(person_id)s
), splits AS (
    DELETE FROM split_suggestions WHERE person_id = %(person_id)s
)
UPDATE telegram_topics
SET label = %(label)s, label_is_manual = TRUE, hidden = TRUE, exemplar_image_url = NULL,
    cover_face_id = NULL, cover_is_manual = FALSE
WHERE id = %(person_id)s;

-- name: erasure_persons_merged_into
-- Persons merged into %(person_id)s earlier: their names go too.
UPDATE telegram_topics SET label = %(label)s, label_is_manual = TRUE, exemplar_image_url = NULL
WHERE merged_into = %(person_id)s;
