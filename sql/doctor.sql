-- walcast.doctor(): checks what logical decoding with walcast needs and says,
-- in plain words, what to change.

CREATE FUNCTION @extschema@.doctor()
RETURNS TABLE (item text, ok boolean, current_value text, advice text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v text;
    n bigint;
    m bigint;
    ctx text;
BEGIN
    v := current_setting('wal_level');
    item := 'wal_level'; current_value := v; ok := (v = 'logical');
    advice := CASE WHEN ok THEN 'fine'
        ELSE 'run ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL' END;
    RETURN NEXT;

    m := current_setting('max_replication_slots')::bigint;
    SELECT count(*) INTO n FROM pg_replication_slots;
    item := 'max_replication_slots'; current_value := format('%s (%s in use)', m, n);
    ok := n < m;
    advice := CASE WHEN ok THEN format('fine: %s slot(s) free', m - n)
        ELSE 'every slot is in use: drop unused slots or raise max_replication_slots (needs a restart)' END;
    RETURN NEXT;

    m := current_setting('max_wal_senders')::bigint;
    SELECT count(*) INTO n FROM pg_stat_replication;
    item := 'max_wal_senders'; current_value := format('%s (%s in use)', m, n);
    ok := n < m;
    advice := CASE WHEN ok THEN format('fine: %s sender(s) free', m - n)
        ELSE 'every WAL sender is busy: raise max_wal_senders (needs a restart)' END;
    RETURN NEXT;

    SELECT s.setting, s.context INTO v, ctx FROM pg_settings s WHERE s.name = 'output_plugin_libraries';
    IF FOUND THEN
        item := 'output_plugin_libraries'; current_value := v;
        ok := 'walcast' = ANY (string_to_array(replace(replace(v, '"', ''), ' ', ''), ','));
        advice := CASE WHEN ok THEN 'fine: walcast is allowed'
            ELSE format('walcast is not in the allowed output plugins: run ALTER SYSTEM SET output_plugin_libraries = %s, ''walcast''; then %s',
                        (SELECT string_agg(quote_literal(x), ', ') FROM unnest(string_to_array(replace(v, ' ', ''), ',')) AS x),
                        CASE WHEN ctx = 'postmaster' THEN 'restart PostgreSQL' ELSE 'SELECT pg_reload_conf();' END) END;
        RETURN NEXT;
    END IF;

    SELECT (r.rolsuper OR r.rolreplication) INTO ok FROM pg_roles r WHERE r.rolname = current_user;
    item := 'replication privilege'; current_value := current_user;
    advice := CASE WHEN ok THEN 'fine: this role may create slots and stream changes'
        ELSE format('run ALTER ROLE %I REPLICATION; (as a superuser) so this role can create slots and stream', current_user) END;
    RETURN NEXT;

    v := current_setting('max_slot_wal_keep_size');
    item := 'max_slot_wal_keep_size'; current_value := v; ok := (v <> '-1');
    advice := CASE WHEN ok THEN 'fine: a forgotten slot cannot fill the disk with WAL'
        ELSE 'unlimited: a slot nobody reads keeps all WAL; consider ALTER SYSTEM SET max_slot_wal_keep_size = ''10GB''' END;
    RETURN NEXT;

    FOR item, current_value, ok IN
        SELECT format('slot %s', s.slot_name),
               format('%s, %s behind', CASE WHEN s.active THEN 'active' ELSE 'inactive' END,
                      pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn))),
               s.active OR pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn) < 1024 * 1024 * 1024
          FROM pg_replication_slots s
         WHERE s.plugin = 'walcast' AND s.restart_lsn IS NOT NULL
    LOOP
        advice := CASE WHEN ok THEN 'fine'
            ELSE 'inactive and holding over 1 GB of WAL: resume its consumer or drop it with pg_drop_replication_slot' END;
        RETURN NEXT;
    END LOOP;

    SELECT count(*) INTO n FROM pg_event_trigger
     WHERE evtname IN ('walcast_ddl_capture', 'walcast_ddl_capture_drop') AND evtenabled <> 'D';
    item := 'ddl capture'; current_value := format('%s of 2 event triggers enabled', n); ok := (n = 2);
    advice := CASE WHEN ok THEN 'fine: DDL statements appear in the stream as DDL objects'
        ELSE 'run ALTER EVENT TRIGGER walcast_ddl_capture ENABLE; and ALTER EVENT TRIGGER walcast_ddl_capture_drop ENABLE;' END;
    RETURN NEXT;
END
$$;

COMMENT ON FUNCTION @extschema@.doctor() IS
    'walcast: checks the settings logical decoding with walcast needs and says what to change';
