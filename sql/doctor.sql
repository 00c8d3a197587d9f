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

    -- Recorded by walcast-proxy before it made the slot, replicated with the
    -- data: a record without its slot is a slot lost in a failover (or
    -- dropped outside walcast).
    -- (Read by roles that may: the table is walcast-proxy's.)
    IF has_table_privilege('@extschema@.streams', 'SELECT') THEN
        FOR item, current_value IN
            SELECT format('slot %s', r.slot_name), 'recorded in walcast.streams, not on this server'
              FROM @extschema@.streams r
             WHERE NOT EXISTS (SELECT FROM pg_replication_slots s WHERE s.slot_name = r.slot_name)
        LOOP
            ok := false;
            advice := 'lost (a failover to a server without it, or dropped outside walcast): its changes since its last confirmed position cannot be read; walcast-proxy does not make it again on its own (--recreate-lost-slot for the proxy''s slot, DELETE /v1/streams/<name> for a durable stream)';
            RETURN NEXT;
        END LOOP;
    END IF;

    IF current_setting('server_version_num')::int >= 170000 THEN
        -- The failover column exists from PostgreSQL 17 on.
        EXECUTE 'SELECT count(*) FILTER (WHERE failover), count(*) FROM pg_replication_slots '
                'WHERE plugin = ''walcast'' AND NOT temporary' INTO n, m;
        item := 'failover slots'; current_value := format('%s of %s walcast slots', n, m); ok := (n = m);
        advice := CASE WHEN ok THEN 'fine: a standby that synchronizes slots keeps them across a failover'
            ELSE 'walcast-proxy makes its slots failover slots when it starts (--failover-slots true); others: ALTER_REPLICATION_SLOT name (FAILOVER true) on a replication connection' END;
        RETURN NEXT;

        v := current_setting('synchronized_standby_slots');
        SELECT count(*) INTO n FROM pg_replication_slots WHERE slot_type = 'physical';
        item := 'synchronized_standby_slots'; current_value := v; ok := (v <> '' OR n = 0);
        advice := CASE WHEN v <> '' THEN 'fine: clients get a change only once these standbys have it'
            WHEN n = 0 THEN 'fine: no standby streams from a physical slot here'
            ELSE 'empty: a client may get a change no standby has yet, and after a failover the change never happened; ALTER SYSTEM SET synchronized_standby_slots = ''<the standbys'' physical slots>''; SELECT pg_reload_conf();' END;
        RETURN NEXT;
    END IF;

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
