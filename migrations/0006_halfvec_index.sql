-- 512-d embeddings (InsightFace's ArcFace) are searched through an HNSW index of their
-- half-precision copies (halfvec, pgvector 0.7+): half the index, so twice the faces fit in
-- shared_buffers, with the same recall of the neighbours the matcher uses (bench/bench_scale.py,
-- docs/SCALING.md). The column keeps full precision; the queries compare
-- embedding::halfvec(512) (database.Queries.for_dimension). 128-d dlib embeddings keep the index
-- on the column. On an archive of 512-d faces this builds the new index (1M faces: see
-- docs/SCALING.md for how long).
DO $$
BEGIN
    IF (SELECT atttypmod FROM pg_attribute
        WHERE attrelid = 'face_embeddings'::regclass AND attname = 'embedding') = 512 THEN
        DROP INDEX IF EXISTS idx_embeddings_vector;
        CREATE INDEX IF NOT EXISTS idx_embeddings_halfvec ON face_embeddings
            USING hnsw ((embedding::halfvec(512)) halfvec_cosine_ops)
            WITH (m = 16, ef_construction = 200);
    END IF;
END $$;
