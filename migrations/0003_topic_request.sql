-- Version 3: a topic request whose outcome is not known yet, kept until its topic is recorded.
-- The random_id makes a retry after a lost answer (crash, timeout) come back as a duplicate
-- instead of a second topic; the topic Telegram did create is then looked up by the title it
-- was requested with, which is kept because the person may have been renamed in between. Both
-- are recorded before the request is sent and cleared when the topic is recorded, so a topic
-- recreated after someone deleted it gets a new random_id.
ALTER TABLE telegram_topics
    ADD COLUMN topic_request_random_id BIGINT,
    ADD COLUMN topic_request_title TEXT;
