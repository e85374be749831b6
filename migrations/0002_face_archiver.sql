-- Version 2: what DESIGN.md adds to the seed's schema.
--   * persons (telegram_topics) exist before their topic does: topic_id is nullable;
--   * faces carry what matching and the dashboard need (box, crop, state, media item);
--   * the durable job queue (media_jobs) and the media items it deduplicates on;
--   * the upload outbox (uploaded_media rows with a status), unique per (person, media item);
--   * operator corrections, review and merge suggestions, the dashboard's actions;
--   * HNSW instead of the seed's ivfflat (lists = 1000 on an empty table: useless centroids);
--   * timestamps with time zone everywhere.
-- Runs inside one transaction; on a database created by the seed's init-db.sql it keeps every row.

-- ---------------------------------------------------------------------------------------------
-- Time stamps: the seed's TIMESTAMP columns become TIMESTAMPTZ (interpreted as the server's zone).
ALTER TABLE telegram_accounts
    ALTER COLUMN created_at TYPE TIMESTAMPTZ, ALTER COLUMN last_active TYPE TIMESTAMPTZ;
ALTER TABLE telegram_topics
    ALTER COLUMN first_seen TYPE TIMESTAMPTZ, ALTER COLUMN last_seen TYPE TIMESTAMPTZ;
ALTER TABLE face_embeddings ALTER COLUMN detection_timestamp TYPE TIMESTAMPTZ;
ALTER TABLE scan_checkpoints ALTER COLUMN last_updated TYPE TIMESTAMPTZ;
ALTER TABLE uploaded_media ALTER COLUMN uploaded_at TYPE TIMESTAMPTZ;
ALTER TABLE processing_metrics ALTER COLUMN recorded_at TYPE TIMESTAMPTZ;
ALTER TABLE processing_errors ALTER COLUMN error_timestamp TYPE TIMESTAMPTZ;

-- ---------------------------------------------------------------------------------------------
-- The face engine that made the stored embeddings. One row at most: embeddings of two models
-- are not comparable, so the application refuses to start with another engine.
CREATE TABLE face_engine (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    engine TEXT NOT NULL,
    dimension INTEGER NOT NULL CHECK (dimension > 0),
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------------------------------------
-- Accounts: who they are on Telegram, and a flood wait that pauses only this account.
ALTER TABLE telegram_accounts
    ADD COLUMN telegram_user_id BIGINT,
    ADD COLUMN username TEXT,
    ADD COLUMN display_name TEXT,
    ADD COLUMN flood_wait_until TIMESTAMPTZ,
    ADD COLUMN last_error TEXT;

-- ---------------------------------------------------------------------------------------------
-- Watched chats. chat_id is Telegram's marked id (-100… channels and supergroups, negative basic
-- groups, positive users), the same convention everywhere in this schema.
ALTER TABLE scan_checkpoints
    ADD COLUMN chat_username TEXT,
    ADD COLUMN chat_type TEXT CHECK (chat_type IN ('channel', 'supergroup', 'group', 'user')),
    ADD COLUMN noforwards BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN state TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'paused', 'removed')),
    ADD COLUMN deferred_until TIMESTAMPTZ,
    ADD COLUMN last_sweep_at TIMESTAMPTZ,
    ADD COLUMN skipped_media INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN last_error TEXT,
    ADD COLUMN added_at TIMESTAMPTZ NOT NULL DEFAULT now();
ALTER TABLE scan_checkpoints ALTER COLUMN last_processed_message_id SET DEFAULT 0;
UPDATE scan_checkpoints SET last_processed_message_id = 0 WHERE last_processed_message_id IS NULL;
ALTER TABLE scan_checkpoints ALTER COLUMN last_processed_message_id SET NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- A media item: one photo or document, however many messages carry it. Its key is
-- 'photo:<id>' / 'document:<id>' for Telegram media (Telethon has no file_unique_id) and
-- 'sha256:<hex>' for files imported from a Telegram Desktop export.
CREATE TABLE media_items (
    id BIGSERIAL PRIMARY KEY,
    media_key TEXT NOT NULL UNIQUE,
    media_type TEXT NOT NULL CHECK (media_type IN ('photo', 'image', 'video', 'round', 'gif')),
    mime_type TEXT,
    file_size BIGINT,
    -- The first message it was seen in: the source the hub posts link to.
    source_chat_id BIGINT NOT NULL,
    source_message_id BIGINT NOT NULL,
    message_date TIMESTAMPTZ,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'analysed', 'failed', 'skipped')),
    face_count INTEGER,
    analysed_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------------------------------------
-- The durable job queue: one job per source message with media. Workers claim jobs with
-- SELECT … FOR UPDATE SKIP LOCKED and hold a lease; a job whose lease ran out is claimable again.
--   queued  -> to be downloaded by the process that holds account_id's client
--   staged  -> downloaded into staged_path; any worker may analyse it
--   done / failed / skipped -> final
CREATE TABLE media_jobs (
    id BIGSERIAL PRIMARY KEY,
    source_chat_id BIGINT NOT NULL,
    source_message_id BIGINT NOT NULL,
    account_id INTEGER REFERENCES telegram_accounts(id) ON DELETE SET NULL,
    origin TEXT NOT NULL DEFAULT 'telegram' CHECK (origin IN ('telegram', 'export')),
    media_key TEXT NOT NULL,
    media_type TEXT NOT NULL CHECK (media_type IN ('photo', 'image', 'video', 'round', 'gif')),
    mime_type TEXT,
    file_size BIGINT,
    message_date TIMESTAMPTZ,
    media_item_id BIGINT REFERENCES media_items(id) ON DELETE SET NULL,
    status TEXT NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'staged', 'done', 'failed', 'skipped')),
    attempts INTEGER NOT NULL DEFAULT 0,
    -- How many times the job was leased. A worker that dies (kill -9, OOM) never records a
    -- failed attempt, so `attempts` cannot stop a file that crashes every worker that touches
    -- it; `claims` can: the queue gives up on a job claimed too often without finishing.
    claims INTEGER NOT NULL DEFAULT 0,
    run_after TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_owner TEXT,
    lease_expires_at TIMESTAMPTZ,
    staged_path TEXT,
    -- False when staged_path is the operator's own file (an export): it is never deleted.
    staged_owned BOOLEAN NOT NULL DEFAULT TRUE,
    last_error TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    UNIQUE (source_chat_id, source_message_id)
);
CREATE INDEX idx_jobs_claimable ON media_jobs (run_after) WHERE status IN ('queued', 'staged');
CREATE INDEX idx_jobs_account_status ON media_jobs (account_id, status);
CREATE INDEX idx_jobs_media_key ON media_jobs (media_key);
CREATE INDEX idx_jobs_status ON media_jobs (status);

-- ---------------------------------------------------------------------------------------------
-- Persons. A person's Telegram topic id is NULL until the topic exists.
ALTER TABLE telegram_topics ALTER COLUMN topic_id DROP NOT NULL;
ALTER TABLE telegram_topics
    ADD COLUMN label_is_manual BOOLEAN NOT NULL DEFAULT FALSE,   -- named by the operator: never dissolved
    ADD COLUMN hidden BOOLEAN NOT NULL DEFAULT FALSE,            -- no more posts, not in the gallery
    ADD COLUMN merged_into INTEGER REFERENCES telegram_topics(id) ON DELETE SET NULL,
    ADD COLUMN cover_face_id BIGINT,                             -- FK added below, after face ids exist
    ADD COLUMN cover_is_manual BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN hub_chat_id BIGINT,                               -- the hub its topic lives in
    ADD COLUMN topic_title TEXT,                                 -- the title as it is on Telegram
    ADD COLUMN cover_message_id BIGINT,                          -- the cover crop posted first in the topic
    ADD COLUMN created_at TIMESTAMPTZ NOT NULL DEFAULT now();
CREATE INDEX idx_topics_active ON telegram_topics (id) WHERE merged_into IS NULL AND NOT hidden;

-- ---------------------------------------------------------------------------------------------
-- Faces. topic_id is the person; NULL while the face waits in the pending pool or for review.
ALTER TABLE face_embeddings ALTER COLUMN id TYPE BIGINT;
ALTER SEQUENCE face_embeddings_id_seq AS BIGINT;
ALTER TABLE face_embeddings
    ADD COLUMN media_item_id BIGINT REFERENCES media_items(id) ON DELETE CASCADE,
    ADD COLUMN job_id BIGINT REFERENCES media_jobs(id) ON DELETE SET NULL,
    ADD COLUMN bbox REAL[] CHECK (bbox IS NULL OR cardinality(bbox) = 4),
    ADD COLUMN landmarks REAL[],
    ADD COLUMN det_score REAL,
    ADD COLUMN crop_jpeg BYTEA,
    ADD COLUMN frame_time REAL,                -- seconds into a video; NULL for photos
    ADD COLUMN track_id INTEGER,               -- the face's track within its video
    ADD COLUMN low_quality BOOLEAN NOT NULL DEFAULT FALSE,   -- may join a person, never seed one
    ADD COLUMN state TEXT NOT NULL DEFAULT 'assigned'
        CHECK (state IN ('pending', 'assigned', 'review', 'dismissed')),
    ADD COLUMN assigned_by TEXT CHECK (assigned_by IN ('auto', 'seed', 'operator')),
    ADD COLUMN match_similarity REAL,
    ADD COLUMN review_candidates JSONB;
-- Rows from the seed all belong to a person; new rows start in the pending pool.
UPDATE face_embeddings SET state = 'pending' WHERE topic_id IS NULL;
ALTER TABLE face_embeddings ALTER COLUMN state SET DEFAULT 'pending';
ALTER TABLE face_embeddings ADD CONSTRAINT face_person_matches_state
    CHECK ((state = 'assigned') = (topic_id IS NOT NULL));
CREATE INDEX idx_embeddings_media_item ON face_embeddings (media_item_id);
CREATE INDEX idx_embeddings_state ON face_embeddings (state) WHERE state IN ('pending', 'review');

ALTER TABLE telegram_topics ADD CONSTRAINT telegram_topics_cover_face_fkey
    FOREIGN KEY (cover_face_id) REFERENCES face_embeddings(id) ON DELETE SET NULL;

-- The seed's ivfflat index, built on an empty table, has useless centroids. HNSW needs no
-- training and stays good as rows arrive. Parameters: see bench/bench_match.py.
DROP INDEX IF EXISTS idx_embeddings_vector;
CREATE INDEX idx_embeddings_vector ON face_embeddings
    USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 200);

-- "Not this person": the operator moved this face out of this person. The matcher never
-- puts the face back into it.
CREATE TABLE face_rejections (
    face_id BIGINT NOT NULL REFERENCES face_embeddings(id) ON DELETE CASCADE,
    topic_id INTEGER NOT NULL REFERENCES telegram_topics(id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (face_id, topic_id)
);

-- "Maybe the same person": offered to the operator, never merged silently. A rejection is kept
-- so the same pair is not offered again.
CREATE TABLE merge_suggestions (
    id BIGSERIAL PRIMARY KEY,
    person_a INTEGER NOT NULL REFERENCES telegram_topics(id) ON DELETE CASCADE,
    person_b INTEGER NOT NULL REFERENCES telegram_topics(id) ON DELETE CASCADE,
    score REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'accepted', 'rejected')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    decided_at TIMESTAMPTZ,
    CHECK (person_a < person_b),
    UNIQUE (person_a, person_b)
);

-- ---------------------------------------------------------------------------------------------
-- The upload outbox. A row is due once a person and a media item meet; it is posted at most once
-- (UNIQUE (topic_id, media_item_id)). random_id is sent with the post so that Telegram itself
-- refuses a second copy of the same row after a crash between sending and recording.
ALTER TABLE uploaded_media ALTER COLUMN id TYPE BIGINT;
ALTER SEQUENCE uploaded_media_id_seq AS BIGINT;
ALTER TABLE uploaded_media
    ALTER COLUMN uploaded_message_id DROP NOT NULL,
    ALTER COLUMN uploaded_at DROP DEFAULT,
    ALTER COLUMN uploaded_at DROP NOT NULL,
    ADD COLUMN media_item_id BIGINT REFERENCES media_items(id) ON DELETE CASCADE,
    ADD COLUMN status TEXT NOT NULL DEFAULT 'posted'
        CHECK (status IN ('pending', 'sending', 'posted', 'failed', 'cancelled')),
    ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN run_after TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD COLUMN random_id BIGINT,
    ADD COLUMN last_error TEXT,
    ADD COLUMN created_at TIMESTAMPTZ NOT NULL DEFAULT now();
-- Rows from the seed were posted; new rows start as due.
ALTER TABLE uploaded_media ALTER COLUMN status SET DEFAULT 'pending';
ALTER TABLE uploaded_media ADD CONSTRAINT uploaded_media_topic_item_key UNIQUE (topic_id, media_item_id);
ALTER TABLE uploaded_media ADD CONSTRAINT posted_has_message
    CHECK (status <> 'posted' OR uploaded_message_id IS NOT NULL);
CREATE INDEX idx_uploaded_due ON uploaded_media (run_after) WHERE status IN ('pending', 'sending');

-- ---------------------------------------------------------------------------------------------
-- Corrections and requests that need Telegram (topic renames, merges, new chats) are recorded
-- here by the dashboard and scripts, and applied by the daemon, which holds the clients.
CREATE TABLE dashboard_actions (
    id BIGSERIAL PRIMARY KEY,
    action TEXT NOT NULL,
    payload JSONB NOT NULL DEFAULT '{}'::jsonb,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_at TIMESTAMPTZ
);
CREATE INDEX idx_actions_pending ON dashboard_actions (id) WHERE status = 'pending';

-- ---------------------------------------------------------------------------------------------
-- Errors link to the job they happened in.
ALTER TABLE processing_errors ADD COLUMN job_id BIGINT;
CREATE INDEX idx_errors_job ON processing_errors (job_id) WHERE job_id IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- uploaded_media now holds due posts too: a person's message_count counts only what was posted.
CREATE OR REPLACE FUNCTION update_topic_stats(p_topic_id INTEGER)
RETURNS void AS $$
BEGIN
    UPDATE telegram_topics t
    SET
        embedding_count = (
            SELECT COUNT(*) FROM face_embeddings WHERE topic_id = t.id
        ),
        message_count = (
            SELECT COUNT(*) FROM uploaded_media WHERE topic_id = t.id AND status = 'posted'
        )
    WHERE t.id = p_topic_id;
END;
$$ LANGUAGE plpgsql;
