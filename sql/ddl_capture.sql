-- DDL capture: after each DDL statement, write a transactional logical
-- message with prefix 'walcast.ddl' whose content is
--   {"tag": <command tag>, "object": <identity of the main object>, "sql": <statement text>}
-- The walcast output plugin turns it into {"action":"DDL",...} in the stream,
-- at the statement's place in its transaction.

CREATE FUNCTION @extschema@.ddl_capture() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    obj text;
    found_any boolean := false;
BEGIN
    -- Without logical WAL nobody can decode the message: stay out of the way.
    IF current_setting('wal_level') <> 'logical' THEN
        RETURN;
    END IF;
    IF TG_EVENT = 'sql_drop' THEN
        -- ALTER TABLE ... DROP COLUMN also fires ddl_command_end; report it there.
        IF TG_TAG NOT LIKE 'DROP %' THEN
            RETURN;
        END IF;
        SELECT d.object_identity, true INTO obj, found_any
          FROM pg_event_trigger_dropped_objects() AS d
         WHERE d.original
         ORDER BY d.classid, d.objid
         LIMIT 1;
    ELSE
        SELECT c.object_identity, true INTO obj, found_any
          FROM pg_event_trigger_ddl_commands() AS c
         ORDER BY (c.command_tag = TG_TAG) DESC
         LIMIT 1;
    END IF;
    IF NOT coalesce(found_any, false) THEN
        RETURN;
    END IF;
    PERFORM pg_logical_emit_message(
        true,
        'walcast.ddl',
        json_build_object('tag', TG_TAG, 'object', obj, 'sql', current_query())::text
    );
END
$$;

COMMENT ON FUNCTION @extschema@.ddl_capture() IS
    'walcast: emits a walcast.ddl logical message for each DDL statement';

CREATE EVENT TRIGGER walcast_ddl_capture ON ddl_command_end
    EXECUTE FUNCTION @extschema@.ddl_capture();
CREATE EVENT TRIGGER walcast_ddl_capture_drop ON sql_drop
    EXECUTE FUNCTION @extschema@.ddl_capture();
