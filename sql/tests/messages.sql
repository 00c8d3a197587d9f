-- Logical messages: transactional and not, text and binary content, prefixes.
-- options: actions=message
SELECT pg_logical_emit_message(true, 'app', 'hello "world"');
SELECT pg_logical_emit_message(false, 'app.events', E'line1\nline2');
SELECT pg_logical_emit_message(true, 'bin', '\xdeadbeef'::bytea);
SELECT pg_logical_emit_message(false, '', '');
BEGIN;
SELECT pg_logical_emit_message(true, 'app', 'rolled back');
ROLLBACK;
-- a walcast.ddl message that is not valid DDL content stays a message
SELECT pg_logical_emit_message(true, 'walcast.ddl', 'not json');
