-- Persons: matching faces to persons, creating persons, and the operator's corrections.
-- Used by identity_matcher.py (the daemon, async) and persons.py (the dashboard, sync).
-- Persons are rows of telegram_topics (id = person id); faces are rows of face_embeddings.

-- ---------------------------------------------------------------------------------------------
-- Matching

-- name: persons_set_ef_search
-- hnsw.ef_search for the rest of this transaction (SET LOCAL cannot take a parameter).
SELECT set_config('hnsw.ef_search', %(ef_search)s, true);

-- name: persons_knn
-- The %(k)s faces nearest to %(embedding)s by cosine distance, leaving out the faces of media
-- item %(media_item_id)s (NULL: none) and the faces %(skip_ids)s, then only those at least
-- %(min_similarity)s similar. The exclusions are inside the index scan, so that with
-- hnsw.iterative_scan (database.SESSION_SETTINGS) the scan goes on until k faces pass them
-- (a stored face is its own nearest neighbour: outside, it would take one of the k places).
-- The similarity filter comes after the top-k: inside, a face with fewer than k neighbours
-- above it would make the scan run on to hnsw.max_scan_tuples.
-- person_id follows merged_into (matching never lands on an absorbed person).
-- The embedding, if %(with_embedding)s, lets the joining rule tell whether a pending
-- neighbour is the winner's too (RuleParams.pending_support); not sent otherwise.
-- For 512-d embeddings the distance is rewritten to the halfvec index's (Queries.for_dimension).
SELECT n.id, n.state, n.media_item_id, n.track_id, n.low_quality, n.similarity,
       COALESCE(t.merged_into, t.id) AS person_id,
       CASE WHEN %(with_embedding)s THEN n.embedding END AS embedding
FROM (
    SELECT id, topic_id, state, media_item_id, track_id, low_quality, embedding,
           1 - (embedding <=> %(embedding)s) AS similarity
    FROM face_embeddings
    WHERE (media_item_id = %(media_item_id)s::bigint) IS NOT TRUE
      AND id <> ALL(%(skip_ids)s::bigint[])
    ORDER BY embedding <=> %(embedding)s
    LIMIT %(k)s
) AS n
LEFT JOIN telegram_topics t ON t.id = n.topic_id
WHERE n.similarity >= %(min_similarity)s
ORDER BY n.similarity DESC;

-- name: persons_views
-- Persons %(person_ids)s as a whole: face count and mean embedding (average linkage to a person
-- is a face's dot product with this mean). Reads each person's faces by idx_embeddings_topic.
SELECT topic_id, count(*), avg(embedding)
FROM face_embeddings
WHERE topic_id = ANY(%(person_ids)s::integer[])
GROUP BY topic_id;

-- name: persons_lock
-- Serialises person creation and every change to the pending pool (see identity_matcher.py):
-- held until the transaction ends.
SELECT pg_advisory_xact_lock(%(key)s);

-- name: persons_media_item
-- The media item whose faces are being matched: the source message its posts link to.
SELECT id, source_chat_id, source_message_id FROM media_items WHERE id = %(media_item_id)s;

-- name: persons_media_persons
-- Persons that already have a face in media item %(media_item_id)s, other than the faces
-- %(except_ids)s: no other face of that photo or video may join them.
SELECT DISTINCT COALESCE(t.merged_into, t.id)
FROM face_embeddings f JOIN telegram_topics t ON t.id = f.topic_id
WHERE f.media_item_id = %(media_item_id)s AND NOT (f.id = ANY(%(except_ids)s::bigint[]));

-- name: persons_rejections
-- "Not this person" facts about the faces %(face_ids)s (persons followed through merges).
SELECT r.face_id, COALESCE(t.merged_into, t.id)
FROM face_rejections r JOIN telegram_topics t ON t.id = r.topic_id
WHERE r.face_id = ANY(%(face_ids)s::bigint[]);

-- name: persons_insert_face
-- Stores one face. topic_id is the person (NULL unless state is 'assigned').
INSERT INTO face_embeddings (
    topic_id, embedding, source_chat_id, source_message_id, quality_score, media_item_id,
    job_id, bbox, landmarks, det_score, crop_jpeg, frame_time, track_id, low_quality, state,
    assigned_by, match_similarity, review_candidates)
VALUES (
    %(person_id)s, %(embedding)s, %(source_chat_id)s, %(source_message_id)s, %(quality)s,
    %(media_item_id)s, %(job_id)s, %(bbox)s, %(landmarks)s, %(det_score)s, %(crop_jpeg)s,
    %(frame_time)s, %(track_id)s, %(low_quality)s, %(state)s, %(assigned_by)s,
    %(similarity)s, %(review_candidates)s)
RETURNING id;

-- name: persons_seed_candidates
-- Pending faces that may found a person with %(embedding)s: its %(k)s nearest faces among those
-- waiting in the pending pool, good enough to seed and not of media item %(media_item_id)s,
-- then those at least %(min_similarity)s similar. The pool filter is inside the index scan
-- (iterative, database.SESSION_SETTINGS): outside, a crowd of assigned faces near a pending
-- one would hide the pending faces behind it. The similarity filter comes after (see
-- persons_knn); hnsw.max_scan_tuples bounds the scan where few pending faces are near.
SELECT n.id, n.media_item_id, n.track_id, n.embedding, n.similarity
FROM (
    SELECT id, media_item_id, track_id, embedding,
           1 - (embedding <=> %(embedding)s) AS similarity
    FROM face_embeddings
    WHERE state = 'pending' AND NOT low_quality
      AND (media_item_id = %(media_item_id)s::bigint) IS NOT TRUE
    ORDER BY embedding <=> %(embedding)s
    LIMIT %(k)s
) AS n
WHERE n.similarity >= %(min_similarity)s
ORDER BY n.similarity DESC;

-- name: persons_pending_units
-- The pending faces of the units (one photo face, or one video track) of the faces %(face_ids)s:
-- faces of one track are one person, so they move together.
SELECT f.id, f.media_item_id, f.track_id, f.embedding, f.low_quality
FROM face_embeddings f
-- Written as a list of ids (the faces, and their tracks' faces through the media item index) so
-- that it reads a few rows by key: an OR over "or in the same track" read every pending face
-- (418 ms a call at 1M faces, 57 calls a photo; bench/bench_scale.py).
WHERE f.state = 'pending'
  AND f.id IN (SELECT unnest(%(face_ids)s::bigint[])
               UNION
               SELECT t.id FROM face_embeddings g
               JOIN face_embeddings t ON t.media_item_id = g.media_item_id AND t.track_id = g.track_id
               WHERE g.id = ANY(%(face_ids)s::bigint[]) AND g.track_id IS NOT NULL)
ORDER BY f.id;

-- name: persons_face_states
-- Where the faces %(face_ids)s are now (person followed through merges).
SELECT f.id, f.state, COALESCE(t.merged_into, t.id), f.match_similarity
FROM face_embeddings f LEFT JOIN telegram_topics t ON t.id = f.topic_id
WHERE f.id = ANY(%(face_ids)s::bigint[]);

-- name: persons_create
-- A new person, labelled "Person <id>" until the operator names it.
INSERT INTO telegram_topics (id, label)
SELECT n, 'Person ' || n FROM nextval(pg_get_serial_sequence('telegram_topics', 'id')) AS n
RETURNING id;

-- name: persons_assign
-- Puts the faces %(face_ids)s (with their %(similarities)s) into person %(person_id)s, if they
-- are still in state %(from_state)s. Returns the faces moved and their media items.
UPDATE face_embeddings f
SET topic_id = %(person_id)s, state = 'assigned', assigned_by = %(assigned_by)s,
    match_similarity = u.similarity, review_candidates = NULL
FROM unnest(%(face_ids)s::bigint[], %(similarities)s::real[]) AS u(id, similarity)
WHERE f.id = u.id AND f.state = %(from_state)s
RETURNING f.id, f.media_item_id;

-- name: persons_insert_due
-- Posts now due: media items %(media_item_ids)s into person %(person_id)s's topic, unless the
-- person is hidden or merged away. A post cancelled earlier (person hidden, face moved out) is
-- due again; one already due or posted stays as it is. Returns the rows that became due.
INSERT INTO uploaded_media (topic_id, media_item_id, source_chat_id, source_message_id, status,
                            random_id)
SELECT t.id, m.id, m.source_chat_id, m.source_message_id, 'pending',
       (random() * 9.0e18)::bigint
FROM telegram_topics t JOIN media_items m ON m.id = ANY(%(media_item_ids)s::bigint[])
WHERE t.id = %(person_id)s AND NOT t.hidden AND t.merged_into IS NULL
ON CONFLICT (topic_id, media_item_id) DO UPDATE
    SET status = 'pending', attempts = 0, run_after = now(), last_error = NULL,
        random_id = EXCLUDED.random_id, uploaded_message_id = NULL, uploaded_at = NULL
    WHERE uploaded_media.status = 'cancelled'
RETURNING topic_id, media_item_id;

-- name: persons_refresh
-- Recomputes person %(person_id)s's face count, posted count and cover: the operator's chosen
-- cover while that face still belongs to the person, else its best face (good quality first).
UPDATE telegram_topics t
SET embedding_count = (SELECT count(*) FROM face_embeddings f WHERE f.topic_id = t.id),
    message_count = (SELECT count(*) FROM uploaded_media u
                     WHERE u.topic_id = t.id AND u.status = 'posted'),
    cover_face_id = COALESCE(
        (SELECT f.id FROM face_embeddings f
         WHERE t.cover_is_manual AND f.id = t.cover_face_id AND f.topic_id = t.id),
        (SELECT f.id FROM face_embeddings f WHERE f.topic_id = t.id
         ORDER BY f.low_quality, f.quality_score DESC, f.id LIMIT 1)),
    cover_is_manual = t.cover_is_manual AND EXISTS (
        SELECT 1 FROM face_embeddings f WHERE f.id = t.cover_face_id AND f.topic_id = t.id)
WHERE t.id = %(person_id)s;

-- name: persons_seen
-- Persons %(person_ids)s were just seen in a media item (processing time, not message date).
UPDATE telegram_topics SET last_seen = now() WHERE id = ANY(%(person_ids)s::integer[]);

-- name: persons_suggest_merge
-- Offers persons %(person_a)s < %(person_b)s as "maybe the same person" with %(score)s, unless
-- either is merged away, the operator split them (a face of one was moved out of the other),
-- or they appear together in one photo or video. A pair already offered keeps its decision;
-- an open offer keeps its best score.
INSERT INTO merge_suggestions (person_a, person_b, score)
SELECT %(person_a)s, %(person_b)s, %(score)s
WHERE NOT EXISTS (SELECT 1 FROM telegram_topics t
                  WHERE t.id IN (%(person_a)s, %(person_b)s) AND t.merged_into IS NOT NULL)
  AND NOT EXISTS (SELECT 1 FROM face_rejections r JOIN face_embeddings f ON f.id = r.face_id
                  WHERE (r.topic_id = %(person_a)s AND f.topic_id = %(person_b)s)
                     OR (r.topic_id = %(person_b)s AND f.topic_id = %(person_a)s))
  AND NOT EXISTS (SELECT 1 FROM face_embeddings fa JOIN face_embeddings fb
                      ON fb.media_item_id = fa.media_item_id
                  WHERE fa.topic_id = %(person_a)s AND fb.topic_id = %(person_b)s)
ON CONFLICT (person_a, person_b) DO UPDATE
    SET score = GREATEST(merge_suggestions.score, EXCLUDED.score)
    WHERE merge_suggestions.status = 'open'
RETURNING id;

-- name: persons_claim
-- Locks person %(person_id)s against a concurrent merge or hide before a face joins it; returns
-- where its faces go now (the survivor, if it was merged meanwhile). NO KEY UPDATE, not SHARE:
-- the transaction updates this row later (persons_refresh), and two workers holding share locks
-- on one person would deadlock there. Inserting faces (a foreign key check) is not blocked.
SELECT COALESCE(merged_into, id) FROM telegram_topics WHERE id = %(person_id)s FOR NO KEY UPDATE;

-- ---------------------------------------------------------------------------------------------
-- Operator corrections (persons.py)

-- name: persons_lock_rows
-- The persons %(person_ids)s, locked for a correction, in id order (no deadlocks).
SELECT id, label, label_is_manual, hidden, merged_into, topic_id, embedding_count
FROM telegram_topics WHERE id = ANY(%(person_ids)s::integer[]) ORDER BY id FOR UPDATE;

-- name: persons_merged_into
-- Where person %(person_id)s's faces go: itself, or the person it was merged into.
SELECT COALESCE(merged_into, id) FROM telegram_topics WHERE id = %(person_id)s;

-- name: persons_rename
UPDATE telegram_topics SET label = %(label)s, label_is_manual = TRUE WHERE id = %(person_id)s;

-- name: persons_record_action
-- A change the daemon must make on Telegram (payloads: persons.py docstring).
INSERT INTO dashboard_actions (action, payload) VALUES (%(action)s, %(payload)s) RETURNING id;

-- name: persons_faces_for_update
-- The faces %(face_ids)s, locked, with their person (followed through merges) and media item.
SELECT f.id, COALESCE(t.merged_into, t.id), f.state, f.media_item_id, f.track_id
FROM face_embeddings f LEFT JOIN telegram_topics t ON t.id = f.topic_id
WHERE f.id = ANY(%(face_ids)s::bigint[]) ORDER BY f.id FOR UPDATE OF f;

-- name: persons_review_unit
-- Face %(face_id)s and the other faces of its video track that await review with it.
SELECT g.id FROM face_embeddings f JOIN face_embeddings g
    ON g.id = f.id OR (f.track_id IS NOT NULL AND g.media_item_id = f.media_item_id
                       AND g.track_id = f.track_id AND g.state = 'review')
WHERE f.id = %(face_id)s ORDER BY g.id;

-- name: persons_reject
-- "Not this person": faces %(face_ids)s may never be matched to the persons %(person_ids)s
-- (pairwise) again.
INSERT INTO face_rejections (face_id, topic_id)
SELECT * FROM unnest(%(face_ids)s::bigint[], %(person_ids)s::integer[])
ON CONFLICT DO NOTHING;

-- name: persons_unreject
-- The operator put faces %(face_ids)s into person %(person_id)s: an older "not this person" goes.
DELETE FROM face_rejections WHERE topic_id = %(person_id)s AND face_id = ANY(%(face_ids)s::bigint[]);

-- name: persons_place_faces
-- The operator's placement of faces %(face_ids)s: into person %(person_id)s (state 'assigned'),
-- or out of any person (state 'pending' or 'dismissed', person NULL).
UPDATE face_embeddings
SET topic_id = %(person_id)s, state = %(state)s,
    assigned_by = CASE WHEN %(state)s = 'assigned' THEN 'operator' END,
    match_similarity = NULL, review_candidates = NULL
WHERE id = ANY(%(face_ids)s::bigint[]);

-- name: persons_withdraw_posts
-- Person %(person_id)s no longer has a face in some of the media items %(media_item_ids)s: its
-- posts of those are withdrawn. Due ones are cancelled here; posted (or being sent) ones are
-- returned, for a delete_posts action.
WITH gone AS (
    SELECT u.id, u.status FROM uploaded_media u
    WHERE u.topic_id = %(person_id)s AND u.media_item_id = ANY(%(media_item_ids)s::bigint[])
      AND u.status <> 'cancelled'
      AND NOT EXISTS (SELECT 1 FROM face_embeddings f
                      WHERE f.topic_id = u.topic_id AND f.media_item_id = u.media_item_id)
), cancelled AS (
    UPDATE uploaded_media u SET status = 'cancelled', last_error = 'face moved out of this person'
    FROM gone WHERE u.id = gone.id AND gone.status IN ('pending', 'failed')
    RETURNING u.id
)
SELECT id FROM gone WHERE status IN ('posted', 'sending') ORDER BY id;

-- name: persons_dissolve_if_empty
-- Deletes person %(person_id)s if nothing is left of it: no face, not named by the operator, no
-- topic on Telegram, nothing posted or being posted, nobody merged into it.
DELETE FROM telegram_topics t
WHERE t.id = %(person_id)s AND NOT t.label_is_manual AND t.topic_id IS NULL
  AND t.merged_into IS NULL
  AND NOT EXISTS (SELECT 1 FROM face_embeddings f WHERE f.topic_id = t.id)
  AND NOT EXISTS (SELECT 1 FROM uploaded_media u
                  WHERE u.topic_id = t.id AND u.status IN ('posted', 'sending'))
  AND NOT EXISTS (SELECT 1 FROM telegram_topics m WHERE m.merged_into = t.id)
RETURNING id;

-- name: persons_set_hidden
UPDATE telegram_topics SET hidden = %(hidden)s WHERE id = %(person_id)s;

-- name: persons_cancel_due
-- Cancels person %(person_id)s's posts not sent yet, noting %(reason)s.
UPDATE uploaded_media SET status = 'cancelled', last_error = %(reason)s
WHERE topic_id = %(person_id)s AND status IN ('pending', 'failed')
RETURNING media_item_id;

-- name: persons_resume_posts
-- Posts of person %(person_id)s cancelled for %(reason)s are due again.
UPDATE uploaded_media
SET status = 'pending', attempts = 0, run_after = now(), last_error = NULL,
    random_id = (random() * 9.0e18)::bigint
WHERE topic_id = %(person_id)s AND status = 'cancelled' AND last_error = %(reason)s
RETURNING topic_id, media_item_id;

-- name: persons_face_media
-- The media items in which person %(person_id)s has a face.
SELECT DISTINCT media_item_id FROM face_embeddings
WHERE topic_id = %(person_id)s AND media_item_id IS NOT NULL ORDER BY media_item_id;

-- name: persons_post_media
-- The media items person %(person_id)s has posted or has due (duplicate faces are not stored,
-- so this can be more than its faces' media items).
SELECT media_item_id FROM uploaded_media
WHERE topic_id = %(person_id)s AND status <> 'cancelled' AND media_item_id IS NOT NULL
ORDER BY media_item_id;

-- name: persons_move_all_faces
-- Merge: every face of person %(absorbed_id)s goes to person %(survivor_id)s.
UPDATE face_embeddings SET topic_id = %(survivor_id)s WHERE topic_id = %(absorbed_id)s
RETURNING id;

-- name: persons_carry_rejections
-- Merge: a face the operator moved out of the absorbed person is not the survivor either
-- (unless the operator has put it into the survivor).
INSERT INTO face_rejections (face_id, topic_id)
SELECT r.face_id, %(survivor_id)s
FROM face_rejections r JOIN face_embeddings f ON f.id = r.face_id
WHERE r.topic_id = %(absorbed_id)s AND f.topic_id IS DISTINCT FROM %(survivor_id)s
ON CONFLICT DO NOTHING;

-- name: persons_absorb
-- Merge: person %(absorbed_id)s (and any person merged into it before) now points at the survivor.
UPDATE telegram_topics SET merged_into = %(survivor_id)s
WHERE id = %(absorbed_id)s OR merged_into = %(absorbed_id)s;

-- name: persons_take_label
-- Merge: an unnamed survivor takes the absorbed person's operator-given name.
UPDATE telegram_topics s SET label = a.label, label_is_manual = TRUE
FROM telegram_topics a
WHERE s.id = %(survivor_id)s AND a.id = %(absorbed_id)s AND a.label_is_manual
  AND NOT s.label_is_manual
RETURNING s.label;

-- name: persons_settle_suggestions
-- Merge: the suggestion for this pair is accepted; other open ones about the absorbed person go.
WITH accepted AS (
    UPDATE merge_suggestions SET status = 'accepted', decided_at = now()
    WHERE person_a = LEAST(%(survivor_id)s, %(absorbed_id)s)
      AND person_b = GREATEST(%(survivor_id)s, %(absorbed_id)s)
    RETURNING id
)
DELETE FROM merge_suggestions
WHERE status = 'open' AND (person_a = %(absorbed_id)s OR person_b = %(absorbed_id)s)
  AND id NOT IN (SELECT id FROM accepted);

-- name: persons_suggestion_for_update
SELECT id, person_a, person_b, status FROM merge_suggestions WHERE id = %(suggestion_id)s FOR UPDATE;

-- name: persons_decide_suggestion
UPDATE merge_suggestions SET status = %(status)s, decided_at = now() WHERE id = %(suggestion_id)s;

-- name: persons_set_cover
-- The operator's cover for person %(person_id)s (face %(face_id)s), or back to automatic (NULL).
UPDATE telegram_topics
SET cover_face_id = %(face_id)s, cover_is_manual = %(face_id)s::bigint IS NOT NULL
WHERE id = %(person_id)s;

-- ---------------------------------------------------------------------------------------------
-- bench/bench_match.py only: load synthetic faces, rebuild the index, compare with an exact scan.

-- name: bench_create_persons
-- %(count)s persons with ids 1..count (the bench runs on a fresh database).
INSERT INTO telegram_topics (label) SELECT 'Person ' || g FROM generate_series(1, %(count)s) AS g;

-- name: bench_copy_faces
-- COPY … FROM STDIN (FORMAT BINARY): topic_id (NULL = pending), state, chat, message, quality, embedding.
COPY face_embeddings (topic_id, state, source_chat_id, source_message_id, quality_score, embedding)
FROM STDIN WITH (FORMAT BINARY);

-- name: bench_drop_index
-- Both HNSW indexes (a 512-d schema has the halfvec one): the bench builds the column's own.
DROP INDEX IF EXISTS idx_embeddings_vector;
DROP INDEX IF EXISTS idx_embeddings_halfvec;

-- name: bench_build_settings
-- Memory and workers for building the HNSW index (the graph must fit in maintenance_work_mem).
SELECT set_config('maintenance_work_mem', %(memory)s, false),
       set_config('max_parallel_maintenance_workers', %(workers)s, false);

-- name: bench_create_index
-- Needs client-side binding (psycopg.ClientCursor): DDL takes no server-side parameters.
CREATE INDEX idx_embeddings_vector ON face_embeddings
    USING hnsw (embedding vector_cosine_ops) WITH (m = %(m)s, ef_construction = %(ef_construction)s);

-- name: bench_index_size
SELECT pg_relation_size('idx_embeddings_vector'), pg_relation_size('face_embeddings');

-- name: bench_exact_scan
-- For the rest of this transaction, no index scans: persons_knn then reads every row (exact).
SELECT set_config('enable_indexscan', 'off', true);

-- name: bench_analyze
ANALYZE face_embeddings;

-- name: bench_face_ids
-- Face ids in load order (COPY inserts in order on a fresh table).
SELECT id FROM face_embeddings ORDER BY id;

-- name: bench_set_shared_buffers
-- Needs client-side binding (ALTER SYSTEM takes no parameters) and a restart.
ALTER SYSTEM SET shared_buffers = %(value)s;

-- name: bench_show_shared_buffers
SELECT current_setting('shared_buffers');

-- ---------------------------------------------------------------------------------------------
-- bench/bench_persons.py and tests/test_matcher_scale.py: photos replayed through the matcher.

-- name: bench_insert_media_item
-- A media item for photo %(message_id)s of chat %(chat_id)s, as the queue makes one.
INSERT INTO media_items (media_key, media_type, source_chat_id, source_message_id)
VALUES (%(media_key)s, 'photo', %(chat_id)s, %(message_id)s) RETURNING id;

-- name: bench_face_persons
-- The person (or NULL) and state of every stored face.
SELECT id, topic_id, state FROM face_embeddings;

-- name: bench_fast_commit
-- This session's commits do not wait for the disk (a replay's thousands of small transactions;
-- the data is thrown away afterwards).
SELECT set_config('synchronous_commit', 'off', false);

-- name: bench_import_faces
-- bench/bench_persons.py --import: every stored face of the imported messages of chat
-- %(chat_id)s, with its message, person (following merges), state and box.
SELECT j.source_message_id, f.id, COALESCE(t.merged_into, t.id), f.state, f.bbox
FROM media_jobs j
JOIN face_embeddings f ON f.media_item_id = j.media_item_id
LEFT JOIN telegram_topics t ON t.id = f.topic_id
WHERE j.source_chat_id = %(chat_id)s;

-- name: bench_import_posts
-- bench/bench_persons.py --import: the persons each imported message of %(chat_id)s is due in.
SELECT j.source_message_id, COALESCE(t.merged_into, t.id)
FROM media_jobs j
JOIN uploaded_media u ON u.media_item_id = j.media_item_id
JOIN telegram_topics t ON t.id = u.topic_id
WHERE j.source_chat_id = %(chat_id)s;
