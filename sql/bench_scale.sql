-- bench/bench_scale.py only: an archive of up to a million faces, loaded with COPY.

-- name: scale_create_media
-- Media items %(first)s..%(last)s, one photo each (the bench stores one face per media item),
-- their message dates spread over the last two years.
INSERT INTO media_items (id, media_key, media_type, source_chat_id, source_message_id,
                         message_date, status, face_count, analysed_at)
SELECT g, 'bench-' || g, 'photo', -1001, g, now() - (g %% 730) * interval '1 day', 'analysed', 1, now()
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g;

-- name: scale_media_sequence
-- Past the ids given above (probe photos take theirs from the sequence).
SELECT setval('media_items_id_seq', (SELECT max(id) FROM media_items));

-- name: scale_copy_faces
-- COPY … FROM STDIN (FORMAT BINARY): person (NULL = pending), state, message, media item,
-- quality, crop, embedding.
COPY face_embeddings (topic_id, state, assigned_by, source_chat_id, source_message_id,
                      media_item_id, quality_score, det_score, crop_jpeg, embedding)
FROM STDIN WITH (FORMAT BINARY);

-- name: scale_refresh_counts
-- The persons' maintained counts and dates, as the matcher keeps them.
UPDATE telegram_topics t
SET embedding_count = s.faces, first_seen = s.first_seen, last_seen = s.last_seen
FROM (SELECT f.topic_id, count(*) AS faces, min(m.message_date) AS first_seen,
             max(m.message_date) AS last_seen
      FROM face_embeddings f JOIN media_items m ON m.id = f.media_item_id
      WHERE f.topic_id IS NOT NULL GROUP BY f.topic_id) s
WHERE t.id = s.topic_id;

-- name: scale_drop_indexes
DROP INDEX IF EXISTS idx_embeddings_vector;
DROP INDEX IF EXISTS idx_embeddings_halfvec;

-- name: scale_create_halfvec_index
-- Needs client-side binding (DDL takes no server-side parameters). The table keeps vector(N);
-- the index holds half-precision copies (half the size).
CREATE INDEX idx_embeddings_halfvec ON face_embeddings
    USING hnsw ((embedding::halfvec(%(dim)s)) halfvec_cosine_ops)
    WITH (m = %(m)s, ef_construction = %(ef_construction)s);

-- name: scale_sizes
-- Bytes: each HNSW index, the table with its TOAST (the crops), the whole database.
SELECT coalesce(pg_relation_size(to_regclass('idx_embeddings_vector')), 0),
       coalesce(pg_relation_size(to_regclass('idx_embeddings_halfvec')), 0),
       pg_total_relation_size('face_embeddings'), pg_database_size(current_database());

-- name: scale_biggest_person
SELECT topic_id FROM face_embeddings WHERE topic_id IS NOT NULL
GROUP BY topic_id ORDER BY count(*) DESC LIMIT 1;

-- name: scale_new_media_item
-- A new photo to match (the bench rolls it back with its faces).
INSERT INTO media_items (media_key, media_type, source_chat_id, source_message_id)
VALUES (%(key)s, 'photo', -1002, 1) RETURNING id;
