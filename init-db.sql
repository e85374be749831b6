-- init-db.sql: the full current schema of Face Archiver, for a new, empty database.
--
-- The Docker postgres container runs this once when it creates its database. The application
-- itself does not need it: at start-up it applies the numbered files in migrations/ to any
-- database (empty, made by this file, or made by the original requirements' script) and records
-- them in schema_migrations. tests/test_database.py proves that this file and the migrations
-- produce the same schema; change both together.

CREATE EXTENSION IF NOT EXISTS vector;

-- Which migrations this schema contains (the app applies only later ones).
CREATE TABLE schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (version, name) VALUES (1, 'seed_schema'), (2, 'face_archiver'),
                                                     (3, 'topic_request'), (4, 'telegram_ids_and_account_states'),
                                                     (5, 'dashboard'), (6, 'halfvec_index'), (7, 'dashboard_role'),
                                                     (8, 'person_suggestions'), (9, 'media_previews');

-- The face engine that made the stored embeddings (one row at most). Embeddings of two models
-- are not comparable, so the application refuses to start with another engine.
CREATE TABLE face_engine (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    engine TEXT NOT NULL,
    dimension INTEGER NOT NULL CHECK (dimension > 0),
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- ============================================
-- Telegram accounts
-- ============================================
CREATE TABLE telegram_accounts (
    id SERIAL PRIMARY KEY,
    phone_number VARCHAR(20) UNIQUE NOT NULL,
    session_file_path VARCHAR(255) NOT NULL,
    -- logged_out / banned / frozen: Telegram said so (telegram_errors.py); the account's work waits
    status VARCHAR(20) DEFAULT 'active'
        CONSTRAINT telegram_accounts_status_check
        CHECK (status IN ('active', 'paused', 'error', 'logged_out', 'banned', 'frozen')),
    created_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    last_active TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    telegram_user_id BIGINT,
    username TEXT,
    display_name TEXT,
    flood_wait_until TIMESTAMPTZ,      -- a long flood wait pauses this account only, until then
    last_error TEXT
);
CREATE INDEX idx_accounts_status ON telegram_accounts(status);
CREATE INDEX idx_accounts_last_active ON telegram_accounts(last_active DESC);

-- ============================================
-- Persons (one forum topic each, once it exists)
-- ============================================
CREATE TABLE telegram_topics (
    id SERIAL PRIMARY KEY,
    topic_id BIGINT UNIQUE,                  -- Telegram's topic id; NULL until the topic exists
    label VARCHAR(255) DEFAULT 'Unknown Person',
    first_seen TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    last_seen TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    exemplar_image_url TEXT,
    embedding_count INTEGER DEFAULT 0,
    message_count INTEGER DEFAULT 0,
    label_is_manual BOOLEAN NOT NULL DEFAULT FALSE,   -- named by the operator: never dissolved
    hidden BOOLEAN NOT NULL DEFAULT FALSE,            -- no more posts, not in the gallery
    merged_into INTEGER REFERENCES telegram_topics(id) ON DELETE SET NULL,
    cover_face_id BIGINT,                             -- FK below, once face_embeddings exists
    cover_is_manual BOOLEAN NOT NULL DEFAULT FALSE,
    hub_chat_id BIGINT,                               -- the hub its topic lives in
    topic_title TEXT,                                 -- the title as it is on Telegram
    cover_message_id BIGINT,                          -- the cover crop posted first in the topic
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    topic_request_random_id BIGINT,                   -- a topic request sent, its answer not recorded
    topic_request_title TEXT                          -- ... and the title it asked for
);
CREATE INDEX idx_topics_label ON telegram_topics(label);
CREATE INDEX idx_topics_last_seen ON telegram_topics(last_seen DESC);
CREATE INDEX idx_topics_embedding_count ON telegram_topics(embedding_count DESC);
CREATE INDEX idx_topics_active ON telegram_topics (id) WHERE merged_into IS NULL AND NOT hidden;

-- ============================================
-- Watched chats and their history cursors
-- ============================================
-- chat_id is Telegram's marked id (-100… channels and supergroups, negative basic groups,
-- positive users), the convention used everywhere in this schema.
CREATE TABLE scan_checkpoints (
    id SERIAL PRIMARY KEY,
    account_id INTEGER REFERENCES telegram_accounts(id) ON DELETE CASCADE,
    chat_id BIGINT NOT NULL,
    chat_title VARCHAR(255),
    last_processed_message_id BIGINT NOT NULL DEFAULT 0,
    total_messages INTEGER DEFAULT 0,
    processed_messages INTEGER DEFAULT 0,
    scan_mode VARCHAR(20) DEFAULT 'backfill' CHECK (scan_mode IN ('backfill', 'realtime')),
    last_updated TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    chat_username TEXT,
    chat_type TEXT CHECK (chat_type IN ('channel', 'supergroup', 'group', 'user')),
    noforwards BOOLEAN NOT NULL DEFAULT FALSE,
    state TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'paused', 'removed')),
    deferred_until TIMESTAMPTZ,
    last_sweep_at TIMESTAMPTZ,
    skipped_media INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    added_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE(account_id, chat_id)
);
CREATE INDEX idx_checkpoints_account ON scan_checkpoints(account_id);
CREATE INDEX idx_checkpoints_mode ON scan_checkpoints(scan_mode);
CREATE INDEX idx_checkpoints_last_updated ON scan_checkpoints(last_updated DESC);

-- ============================================
-- Media items and the job queue
-- ============================================
-- A media item: one photo or document, however many messages carry it. Key: 'photo:<id>' /
-- 'document:<id>' for Telegram media, 'sha256:<hex>' for files of a Telegram Desktop export.
CREATE TABLE media_items (
    id BIGSERIAL PRIMARY KEY,
    media_key TEXT NOT NULL UNIQUE,
    media_type TEXT NOT NULL CHECK (media_type IN ('photo', 'image', 'video', 'round', 'gif')),
    mime_type TEXT,
    file_size BIGINT,
    source_chat_id BIGINT NOT NULL,          -- the first message it was seen in
    source_message_id BIGINT NOT NULL,
    message_date TIMESTAMPTZ,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'analysed', 'failed', 'skipped')),
    face_count INTEGER,
    analysed_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One job per source message with media, claimed with FOR UPDATE SKIP LOCKED under a lease.
--   queued -> downloaded by the process holding account_id's client -> staged -> analysed by
--   any worker -> done | failed | skipped
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
    staged_owned BOOLEAN NOT NULL DEFAULT TRUE,   -- false: the operator's own file, never deleted
    last_error TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    -- The account whose id space source_message_id belongs to: private chats and basic groups
    -- number messages per account; 0 for channels, supergroups and exports.
    id_scope INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT media_jobs_message_key UNIQUE (source_chat_id, source_message_id, id_scope)
);
CREATE INDEX idx_jobs_claimable ON media_jobs (run_after) WHERE status IN ('queued', 'staged');
CREATE INDEX idx_jobs_account_status ON media_jobs (account_id, status);
CREATE INDEX idx_jobs_media_key ON media_jobs (media_key);
CREATE INDEX idx_jobs_status ON media_jobs (status);

-- ============================================
-- Faces
-- ============================================
-- topic_id is the person; NULL while the face waits in the pending pool or for review.
-- The embedding's dimension follows the face engine (set when the engine is first recorded).
CREATE TABLE face_embeddings (
    id BIGSERIAL PRIMARY KEY,
    topic_id INTEGER REFERENCES telegram_topics(id) ON DELETE CASCADE,
    embedding vector(512) NOT NULL,
    source_chat_id BIGINT NOT NULL,
    source_message_id BIGINT NOT NULL,
    quality_score REAL DEFAULT 0.0 CHECK (quality_score >= 0.0 AND quality_score <= 1.0),
    detection_timestamp TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    media_item_id BIGINT REFERENCES media_items(id) ON DELETE CASCADE,
    job_id BIGINT REFERENCES media_jobs(id) ON DELETE SET NULL,
    bbox REAL[] CHECK (bbox IS NULL OR cardinality(bbox) = 4),
    landmarks REAL[],
    det_score REAL,
    crop_jpeg BYTEA,
    frame_time REAL,                          -- seconds into a video; NULL for photos
    track_id INTEGER,                         -- the face's track within its video
    low_quality BOOLEAN NOT NULL DEFAULT FALSE,   -- may join a person, never seed one
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'assigned', 'review', 'dismissed')),
    assigned_by TEXT CHECK (assigned_by IN ('auto', 'seed', 'operator')),
    match_similarity REAL,
    review_candidates JSONB,
    CONSTRAINT face_person_matches_state CHECK ((state = 'assigned') = (topic_id IS NOT NULL))
);
CREATE INDEX idx_embeddings_topic ON face_embeddings(topic_id);
CREATE INDEX idx_embeddings_source ON face_embeddings(source_chat_id, source_message_id);
CREATE INDEX idx_embeddings_quality ON face_embeddings(quality_score DESC);
CREATE INDEX idx_embeddings_timestamp ON face_embeddings(detection_timestamp DESC);
CREATE INDEX idx_embeddings_media_item ON face_embeddings (media_item_id);
CREATE INDEX idx_embeddings_state ON face_embeddings (state) WHERE state IN ('pending', 'review');
-- HNSW, not ivfflat: no training on an empty table, good recall as rows arrive. 512-d
-- embeddings are searched through their half-precision copies (migration 0006); a 128-d engine's
-- column gets idx_embeddings_vector on the column itself instead (database.ensure_engine).
CREATE INDEX idx_embeddings_halfvec ON face_embeddings
    USING hnsw ((embedding::halfvec(512)) halfvec_cosine_ops) WITH (m = 16, ef_construction = 200);

ALTER TABLE telegram_topics ADD CONSTRAINT telegram_topics_cover_face_fkey
    FOREIGN KEY (cover_face_id) REFERENCES face_embeddings(id) ON DELETE SET NULL;

-- "Not this person": the matcher never puts the face back into that person.
CREATE TABLE face_rejections (
    face_id BIGINT NOT NULL REFERENCES face_embeddings(id) ON DELETE CASCADE,
    topic_id INTEGER NOT NULL REFERENCES telegram_topics(id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (face_id, topic_id)
);

-- "Maybe the same person": for the operator to confirm; a rejection is remembered.
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

-- ============================================
-- The upload outbox
-- ============================================
-- A row is due once a person and a media item meet, posted at most once per (person, item).
-- random_id goes with the post so Telegram refuses a second copy after a crash.
CREATE TABLE uploaded_media (
    id BIGSERIAL PRIMARY KEY,
    topic_id INTEGER REFERENCES telegram_topics(id) ON DELETE CASCADE,
    source_message_id BIGINT NOT NULL,
    source_chat_id BIGINT NOT NULL,
    uploaded_message_id BIGINT,
    uploaded_at TIMESTAMPTZ,
    media_item_id BIGINT REFERENCES media_items(id) ON DELETE CASCADE,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'sending', 'posted', 'failed', 'cancelled')),
    attempts INTEGER NOT NULL DEFAULT 0,
    run_after TIMESTAMPTZ NOT NULL DEFAULT now(),
    random_id BIGINT,
    last_error TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE(topic_id, source_message_id, source_chat_id),
    CONSTRAINT uploaded_media_topic_item_key UNIQUE (topic_id, media_item_id),
    CONSTRAINT posted_has_message CHECK (status <> 'posted' OR uploaded_message_id IS NOT NULL)
);
CREATE INDEX idx_uploaded_source ON uploaded_media(source_chat_id, source_message_id);
CREATE INDEX idx_uploaded_topic ON uploaded_media(topic_id);
CREATE INDEX idx_uploaded_due ON uploaded_media (run_after) WHERE status IN ('pending', 'sending');

-- ============================================
-- Requests for the daemon (dashboard corrections, new chats)
-- ============================================
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

-- ============================================
-- Metrics and errors for the dashboard
-- ============================================
CREATE TABLE processing_metrics (
    id SERIAL PRIMARY KEY,
    metric_name VARCHAR(100) NOT NULL,
    metric_value BIGINT NOT NULL,
    recorded_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX idx_metrics_name_time ON processing_metrics(metric_name, recorded_at DESC);

CREATE TABLE processing_errors (
    id SERIAL PRIMARY KEY,
    error_type VARCHAR(100) NOT NULL,
    error_message TEXT NOT NULL,
    error_context JSONB,
    error_timestamp TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    job_id BIGINT
);
CREATE INDEX idx_errors_timestamp ON processing_errors(error_timestamp DESC);
CREATE INDEX idx_errors_type ON processing_errors(error_type);
CREATE INDEX idx_errors_job ON processing_errors (job_id) WHERE job_id IS NOT NULL;

-- ============================================
-- The dashboard's own records (migrations/0005_dashboard.sql)
-- ============================================
-- imported_chats: the chats of Telegram Desktop exports that `main.py import` read, with the
-- export's name for them. A message imported from an export has no scan_checkpoints row (no
-- account reads it), so without this the chat had no name anywhere: captions said "chat -100…"
-- and the dashboard's Chats page said no chat was known.
CREATE TABLE imported_chats (
    chat_id BIGINT PRIMARY KEY,                 -- Telegram's marked id, as everywhere
    chat_title TEXT,                            -- the export's "name"
    export_type TEXT,                           -- the export's "type" (private_supergroup, personal_chat, …)
    messages INTEGER NOT NULL DEFAULT 0 CHECK (messages >= 0),   -- messages in its latest import
    media INTEGER NOT NULL DEFAULT 0 CHECK (media >= 0),         -- photo and video files among them
    first_imported_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_imported_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- dashboard_audit: every change made on the dashboard, who made it and what it changed, in the
-- operator's words and as data (what undoing it would need). Written in the same transaction
-- as the change (dashboard_pages/audit.py: record), so the log and the archive cannot disagree.
CREATE TABLE dashboard_audit (
    id BIGSERIAL PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor TEXT NOT NULL DEFAULT 'dashboard',    -- who: the dashboard has one password, one operator
    action TEXT NOT NULL,                       -- e.g. rename_person, merge_persons, retry_jobs
    summary TEXT NOT NULL,                      -- what the operator was told, as plain text
    details JSONB NOT NULL DEFAULT '{}'::jsonb  -- ids and values before and after
);
CREATE INDEX idx_dashboard_audit_at ON dashboard_audit (at DESC);

-- ============================================
-- Maintenance functions (from the original requirements)
-- ============================================
CREATE OR REPLACE FUNCTION cleanup_old_metrics()
RETURNS void AS $$
BEGIN
    DELETE FROM processing_metrics
    WHERE recorded_at < NOW() - INTERVAL '30 days';
END;
$$ LANGUAGE plpgsql;

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

-- ============================================
-- The dashboard's role (migrations/0007_dashboard_role.sql)
-- ============================================
-- dashboard writes: corrections of persons (persons.py), review decisions, chat pauses, retries
-- from the Errors page (recovery.py), "forget this person" (erasure.py), its audit log and the
-- requests it leaves for the daemon (dashboard_actions). It cannot delete faces but through the
-- erasure (erase_person_faces below), write telegram_accounts, the queue's leases, metrics or
-- errors, or change the schema. The dashboard logs in as it (dashboard_role.py): with the
-- embedded server over its trusted socket, with an external one with DASHBOARD_DB_PASSWORD,
-- which the dashboard sets on the role when it starts.
--
-- Roles belong to the whole server, grants to this database: the role is made once, the grants
-- in every database. A user that may not create roles (a managed server) skips it with a notice;
-- the dashboard then says it cannot log in.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'face_archiver_dashboard') THEN
        BEGIN
            CREATE ROLE face_archiver_dashboard LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;   -- made meanwhile by another database's migration
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'cannot create the role face_archiver_dashboard: create it by hand (see README)';
                RETURN;
        END;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO face_archiver_dashboard', current_database());
    GRANT USAGE ON SCHEMA public TO face_archiver_dashboard;
    GRANT SELECT ON ALL TABLES IN SCHEMA public TO face_archiver_dashboard;
    GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO face_archiver_dashboard;
    -- Tables of later migrations can be read too (those made by the user that migrates).
    ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO face_archiver_dashboard;
    -- What the dashboard writes. UPDATE also allows the row locks (FOR UPDATE) it takes.
    GRANT INSERT, UPDATE, DELETE ON telegram_topics, merge_suggestions TO face_archiver_dashboard;
    GRANT UPDATE ON face_embeddings TO face_archiver_dashboard;            -- move, dismiss, review
    GRANT INSERT, DELETE ON face_rejections TO face_archiver_dashboard;
    GRANT INSERT, UPDATE ON uploaded_media TO face_archiver_dashboard;     -- due, cancelled, retried
    GRANT UPDATE ON scan_checkpoints TO face_archiver_dashboard;           -- pause / resume a chat
    GRANT UPDATE ON media_jobs, media_items TO face_archiver_dashboard;    -- retry failed work
    GRANT INSERT ON dashboard_actions, dashboard_audit TO face_archiver_dashboard;
    GRANT DELETE ON dashboard_actions TO face_archiver_dashboard;          -- undo: requests not applied yet
END $$;

-- Deleting a person's faces ("forget this person", erasure.py): the one way the dashboard's role
-- deletes faces. Its faces, and the faces waiting for review with it among their candidates;
-- returns how many went.
CREATE OR REPLACE FUNCTION erase_person_faces(p_person_id INTEGER) RETURNS INTEGER
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    erased INTEGER;
BEGIN
    DELETE FROM face_embeddings
    WHERE topic_id = p_person_id
       OR (state = 'review' AND review_candidates @> jsonb_build_array(jsonb_build_object('person_id', p_person_id)));
    GET DIAGNOSTICS erased = ROW_COUNT;
    RETURN erased;
END $$;
REVOKE ALL ON FUNCTION erase_person_faces(INTEGER) FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'face_archiver_dashboard') THEN
        GRANT EXECUTE ON FUNCTION erase_person_faces(INTEGER) TO face_archiver_dashboard;
    END IF;
END $$;

-- ============================================
-- Suggestions about persons (migrations/0008_person_suggestions.sql)
-- ============================================
-- merge_suggestions: how many of the pair's faces agree with the other person as a whole
-- (average linkage at the join threshold), out of the pair's faces; the review page ranks
-- by it. NULL for an offer made while matching, until the next pass counts it.
ALTER TABLE merge_suggestions
    ADD COLUMN agreeing INTEGER CHECK (agreeing >= 0),
    ADD COLUMN faces INTEGER CHECK (faces >= 0);

-- split_suggestions: a person whose faces form two groups that do not agree with each other
-- (average linkage between the groups below the join threshold) is offered for a split; accepting
-- moves `face_ids` (the smaller group) to a new person, as the operator's move does. A rejected
-- offer is not made again until the person has grown by half (`person_faces` at the time).
CREATE TABLE split_suggestions (
    id BIGSERIAL PRIMARY KEY,
    person_id INTEGER NOT NULL REFERENCES telegram_topics(id) ON DELETE CASCADE,
    face_ids BIGINT[] NOT NULL,
    person_faces INTEGER NOT NULL CHECK (person_faces > 0),
    score REAL NOT NULL,                        -- average linkage between the two groups
    status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'accepted', 'rejected')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    decided_at TIMESTAMPTZ
);
CREATE UNIQUE INDEX idx_split_suggestions_open ON split_suggestions (person_id) WHERE status = 'open';

-- The dashboard's role (migrations/0007) answers split offers, and "forget this person" deletes them.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'face_archiver_dashboard') THEN
        GRANT UPDATE, DELETE ON split_suggestions TO face_archiver_dashboard;
    END IF;
END $$;

-- media_previews: a small JPEG of each analysed photo that has a stored face (long side <= 640 px,
-- made at analysis time: worker_pool.py, media_decode.preview_jpeg), so that the review page can
-- show a face's whole photo once the downloaded file is gone (a download is removed once
-- analysed). In Postgres, as the face crops are: the dashboard needs no file volume.
--
-- A preview shows every face in the photo: it may not outlive any of them. When a face is deleted
-- (erasure: erase_person_faces, retention of the pending pool, reindex, anything), the previews of
-- its media items go in the same statement (the trigger below), whoever deletes it.
CREATE TABLE media_previews (
    media_item_id BIGINT PRIMARY KEY REFERENCES media_items(id) ON DELETE CASCADE,
    preview_jpeg BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION drop_previews_of_deleted_faces() RETURNS TRIGGER
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    DELETE FROM media_previews p USING (SELECT DISTINCT media_item_id FROM deleted_faces) d
    WHERE p.media_item_id = d.media_item_id;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION drop_previews_of_deleted_faces() FROM PUBLIC;

CREATE TRIGGER face_deleted_drops_previews AFTER DELETE ON face_embeddings
    REFERENCING OLD TABLE AS deleted_faces
    FOR EACH STATEMENT EXECUTE FUNCTION drop_previews_of_deleted_faces();
