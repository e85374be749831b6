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
