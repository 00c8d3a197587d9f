-- walcast.streams: what walcast-proxy remembers about each durable stream
-- beyond its replication slot (the table allow-list given when it was
-- created). Rows are written and removed by walcast-proxy; a row whose slot
-- no longer exists is ignored and replaced when the name is used again.

CREATE TABLE @extschema@.streams (
    slot_name name PRIMARY KEY,
    tables text,
    created_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE @extschema@.streams IS
    'durable streams of walcast-proxy: slot name and table allow-list';

-- Kept by pg_dump (the slots themselves are not).
SELECT pg_catalog.pg_extension_config_dump('@extschema@.streams', '');
