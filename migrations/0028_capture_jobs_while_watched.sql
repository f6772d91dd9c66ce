-- rowcast.jobs is captured only while a gateway has a subscriber who may see
-- its rows, and for a while after (issue 13). Every transition the runner
-- makes (claim, step, completion, retry) wrote a change-log row, a whole-row
-- to_jsonb, and made every gateway read and decode it, even with no browser
-- open: a third of a drain's database time (docs/bench/jobs.json).
--
-- A table captured this way names, in rowcast.tables.watch_seq, a sequence
-- whose value is the Unix time (seconds) until which it is watched. Gateways
-- raise it while they have subscribers for the table (src/changes/watch.rs),
-- never lower it, and let it lapse a while after the last one left, so a
-- channel rejoining another gateway after a handoff still finds what it
-- missed in the log. The capture trigger reads it with
-- pg_sequence_last_value(): a sequence is not versioned, so a writer sees the
-- value raised before its statement ran whatever its snapshot, repeatable
-- read included. A table read under a snapshot would not do: a repeatable
-- read writer whose snapshot predates the raise would skip capture after it.
-- A writer whose statement read the old value already holds a transaction
-- id, so the gateway that raised the value waits for every transaction that
-- was open then before its join says `ok`: no change committed after a
-- subscriber's `ok` goes uncaptured.
--
-- Other enabled tables keep capturing every statement (watch_seq null), as
-- do tables with REPLICA IDENTITY FULL, which use the row trigger.

alter table rowcast.tables add column watch_seq regclass;

create sequence rowcast.jobs_watched_until minvalue 0 start 0;
select setval('rowcast.jobs_watched_until', 0, true);

create or replace function rowcast.capture_rows() returns trigger
language plpgsql security definer as $$
declare
    owner_col pg_catalog.text := TG_ARGV[0];
begin
    -- A table captured while watched (TG_ARGV[1]: its sequence's oid) that
    -- nobody watches writes nothing and rings nothing.
    if TG_NARGS OPERATOR(pg_catalog.>) 1
       and coalesce(pg_catalog.pg_sequence_last_value(TG_ARGV[1]::pg_catalog.oid::pg_catalog.regclass), 0)
           OPERATOR(pg_catalog.<=) pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) then
        return null;
    end if;
    -- Every name is schema-qualified (see 0001); the transition tables are
    -- found before any schema is searched. `rowcast_new.*` is the whole row
    -- even when the table has a column named like an alias would be.
    if TG_OP OPERATOR(pg_catalog.=) 'DELETE' then
        insert into rowcast.changes (schema_name, table_name, op, owner, old_record)
        select TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP,
               case when owner_col OPERATOR(pg_catalog.=) '' then null else r OPERATOR(pg_catalog.->>) owner_col end, r
        from (select pg_catalog.to_jsonb(rowcast_old.*) as r from rowcast_old) written;
    else
        insert into rowcast.changes (schema_name, table_name, op, owner, record)
        select TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP,
               case when owner_col OPERATOR(pg_catalog.=) '' then null else r OPERATOR(pg_catalog.->>) owner_col end, r
        from (select pg_catalog.to_jsonb(rowcast_new.*) as r from rowcast_new) written;
    end if;
    -- A statement that wrote no rows rings nothing.
    if found and exists (select 1 from rowcast.listeners
                         where idle and seen_at OPERATOR(pg_catalog.>)
                               (pg_catalog.now() OPERATOR(pg_catalog.-) '30 seconds'::pg_catalog.interval)) then
        perform pg_catalog.pg_notify('rowcast_changes', '');
    end if;
    return null;
end $$;

-- As 0023's, with the table's watch sequence (if any) as the statement
-- triggers' second argument.
create or replace function rowcast.install_capture(tbl regclass, owner_column text) returns void language plpgsql as $$
declare
    col   text := coalesce(owner_column, '');
    args  text := format('%L', col);
    watch regclass := (select t.watch_seq from rowcast.tables t where t.relid = tbl);
begin
    perform rowcast.remove_capture(tbl);
    if (select relreplident = 'f' from pg_class where oid = tbl) then
        execute format('create trigger rowcast_capture after insert or update or delete on %s '
                       'for each row execute function rowcast.capture(%L, %L)', tbl, col, 'full');
        return;
    end if;
    if watch is not null then
        args := format('%L, %L', col, watch::oid);
    end if;
    execute format('create trigger rowcast_capture_insert after insert on %s referencing new table as rowcast_new '
                   'for each statement execute function rowcast.capture_rows(%s)', tbl, args);
    execute format('create trigger rowcast_capture_update after update on %s referencing new table as rowcast_new '
                   'for each statement execute function rowcast.capture_rows(%s)', tbl, args);
    execute format('create trigger rowcast_capture_delete after delete on %s referencing old table as rowcast_old '
                   'for each statement execute function rowcast.capture_rows(%s)', tbl, args);
end $$;

update rowcast.tables set watch_seq = 'rowcast.jobs_watched_until' where relid = 'rowcast.jobs'::regclass;
select rowcast.install_capture(relid::regclass, owner_column) from rowcast.tables where relid = 'rowcast.jobs'::regclass;

-- As for everything here (0003): nothing for PUBLIC.
revoke all on sequence rowcast.jobs_watched_until from public;
revoke all on function rowcast.capture_rows() from public;
revoke all on function rowcast.install_capture(regclass, text) from public;
