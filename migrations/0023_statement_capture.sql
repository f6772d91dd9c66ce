-- Capture one statement at a time instead of one row at a time.
--
-- The row trigger of 0001 runs once per row written: a PL/pgSQL call, an
-- INSERT into the log and the doorbell lookup, each time. A statement that
-- writes many rows (the runner's batch claim and its group commit of
-- completions, an app's bulk update) paid that per row. A statement trigger
-- with a transition table does it once per statement: one INSERT ... SELECT
-- writes every row's change, in the order the statement wrote the rows, and
-- the doorbell is looked up once. The writer-cost scenario measured this kind
-- of trigger at 83 / 82 % of capture-off commits at 8 / 32 writers, against
-- 69 / 51 % for the row trigger (docs/bench/writer-cost.json).
--
-- The log rows are the same as before: one per row, with its own id and
-- clock_timestamp(), its owner, the new row (INSERT, UPDATE) or the old one
-- (DELETE). Tables with REPLICA IDENTITY FULL keep the row trigger: their
-- UPDATEs carry the old row too, and a statement's old and new transition
-- tables would have to be paired by key to say which old row became which.
--
-- Postgres allows a transition table only on a trigger for one event, so a
-- table gets three triggers, one per event.

create function rowcast.capture_rows() returns trigger
language plpgsql security definer as $$
declare
    owner_col pg_catalog.text := TG_ARGV[0];
begin
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

-- Removes capture from `tbl`, whichever triggers it has: the row trigger
-- (0001, and REPLICA IDENTITY FULL tables) or the statement triggers.
create function rowcast.remove_capture(tbl regclass) returns void language plpgsql as $$
begin
    execute format('drop trigger if exists rowcast_capture on %s', tbl);
    execute format('drop trigger if exists rowcast_capture_insert on %s', tbl);
    execute format('drop trigger if exists rowcast_capture_update on %s', tbl);
    execute format('drop trigger if exists rowcast_capture_delete on %s', tbl);
end $$;

-- Installs capture on `tbl`: statement triggers, or the row trigger on a
-- REPLICA IDENTITY FULL table. Removes whichever was there before.
create function rowcast.install_capture(tbl regclass, owner_column text) returns void language plpgsql as $$
declare
    col text := coalesce(owner_column, '');
begin
    perform rowcast.remove_capture(tbl);
    if (select relreplident = 'f' from pg_class where oid = tbl) then
        execute format('create trigger rowcast_capture after insert or update or delete on %s '
                       'for each row execute function rowcast.capture(%L, %L)', tbl, col, 'full');
        return;
    end if;
    execute format('create trigger rowcast_capture_insert after insert on %s referencing new table as rowcast_new '
                   'for each statement execute function rowcast.capture_rows(%L)', tbl, col);
    execute format('create trigger rowcast_capture_update after update on %s referencing new table as rowcast_new '
                   'for each statement execute function rowcast.capture_rows(%L)', tbl, col);
    execute format('create trigger rowcast_capture_delete after delete on %s referencing old table as rowcast_old '
                   'for each statement execute function rowcast.capture_rows(%L)', tbl, col);
end $$;

create or replace function rowcast.enable(tbl regclass, owner_column text default null, public boolean default false,
                                          owner_claim text default 'sub')
returns void language plpgsql as $$
begin
    if (owner_column is not null) = public then
        raise exception 'rowcast.enable(%): give exactly one of owner_column => ''<column>'' or public => true', tbl;
    end if;
    if owner_column is not null and not exists (
        select 1 from pg_attribute
        where attrelid = tbl and attname = owner_column and attnum > 0 and not attisdropped) then
        raise exception 'rowcast.enable(%): no column named "%"', tbl, owner_column;
    end if;
    if coalesce(owner_claim, '') = '' then
        raise exception 'rowcast.enable(%): owner_claim must name a claim, e.g. ''sub'' or ''app_metadata.org_id''', tbl;
    end if;
    if not exists (select 1 from pg_index where indrelid = tbl and indisprimary) then
        raise exception 'rowcast.enable(%): the table needs a primary key', tbl;
    end if;
    insert into rowcast.tables (relid, owner_column, is_public, owner_claim)
    values (tbl, owner_column, public, owner_claim)
    on conflict (relid) do update
        set owner_column = excluded.owner_column, is_public = excluded.is_public,
            owner_claim = excluded.owner_claim, enabled_at = now();
    perform rowcast.install_capture(tbl, owner_column);
    -- Gateways reload their table list on this channel.
    perform pg_notify('rowcast_tables', tbl::text);
end $$;

create or replace function rowcast.disable(tbl regclass) returns void language plpgsql as $$
begin
    perform rowcast.remove_capture(tbl);
    delete from rowcast.tables where relid = tbl;
    perform pg_notify('rowcast_tables', tbl::text);
end $$;

-- Tables enabled before this migration (rowcast.jobs among them) move to the
-- statement triggers now; their visibility rules are unchanged.
select rowcast.install_capture(relid::regclass, owner_column)
from rowcast.tables
where exists (select 1 from pg_class where oid = relid);

-- 0003: PUBLIC executes nothing in this schema.
revoke all on function rowcast.capture_rows() from public;
revoke all on function rowcast.remove_capture(regclass) from public;
revoke all on function rowcast.install_capture(regclass, text) from public;
