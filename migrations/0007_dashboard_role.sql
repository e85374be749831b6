-- The dashboard's own PostgreSQL role (issue 16): it reads everything and writes only what the
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
