-- Suggestions about persons made by the daemon's scheduled pass (suggestions.py, issue 14).
--
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
