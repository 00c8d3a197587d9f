-- walcast.streams: what walcast-proxy remembers about each slot it makes
-- (each durable stream's, with the table allow-list given when it was
-- created, and its own), written before the slot is made. Rows are written
-- and removed by walcast-proxy; a row whose slot no longer exists (a
-- failover to a server without it, a slot dropped outside walcast) marks the
-- stream lost, and walcast-proxy says so instead of starting afresh.

CREATE TABLE @extschema@.streams (
    slot_name name PRIMARY KEY,
    tables text,
    created_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE @extschema@.streams IS
    'durable streams of walcast-proxy: slot name and table allow-list';

-- Kept by pg_dump (the slots themselves are not).
SELECT pg_catalog.pg_extension_config_dump('@extschema@.streams', '');
