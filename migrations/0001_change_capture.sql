-- Change capture: a trigger copies every row change of an enabled table into
-- rowcast.changes in the writer's own transaction, so a change exists exactly
-- when its transaction commits and survives any listener outage.
--
-- NOTIFY is only a doorbell. A NOTIFY on every commit takes Postgres's
-- cluster-wide notify lock and cut 8-32 concurrent writers to a quarter of
-- their speed on our reference machine, so the trigger rings only while some
-- gateway has flagged itself idle (rowcast.listeners.idle); a busy gateway is
-- reading the log anyway and will find the row.

create schema if not exists rowcast;

-- Which tables are captured and who may see their rows: either the user whose
-- JWT `sub` equals owner_column, or everyone (is_public). Exactly one holds.
create table rowcast.tables (
    relid        oid primary key,
    owner_column text,
    is_public    boolean not null default false,
    enabled_at   timestamptz not null default now(),
    constraint tables_owner_xor_public check ((owner_column is not null) <> is_public)
);

-- The change log. Ids come from a sequence with cache 1 so that
-- last_value tells a reader how many ids were handed out; ids are taken
-- before commit, so readers must not skip an id that is still in flight
-- (see src/changes/listener.rs).
create table rowcast.changes (
    id          bigint generated always as identity (cache 1) primary key,
    -- clock_timestamp(): the moment the row changed, not transaction start.
    changed_at  timestamptz not null default clock_timestamp(),
    schema_name text not null,
    table_name  text not null,
    op          text not null check (op in ('INSERT', 'UPDATE', 'DELETE')),
    -- the owner column's value: of the new row, or of the old row for DELETE.
    owner       text,
    -- whole rows; the gateway trims old_record to the primary key unless the
    -- table has REPLICA IDENTITY FULL, as Supabase does.
    record      jsonb,
    old_record  jsonb
);

-- One row per running gateway: its read position (pruning never passes the
-- slowest live reader) and whether it is idle and wants a doorbell.
create table rowcast.listeners (
    id      uuid primary key,
    idle    boolean not null default false,
    cursor  bigint not null default 0,
    seen_at timestamptz not null default now()
);

-- SECURITY DEFINER so app roles need no rights on the log (and cannot forge
-- changes into it). Instead of the usual `SET search_path` clause, which cost
-- writers about a sixth of their throughput at 8 concurrent writers in our
-- measurements, every function, operator and type in the body is
-- schema-qualified, so no caller's search_path can redirect them.
-- The old row is kept for DELETE (owner and filters) and for UPDATE only on
-- REPLICA IDENTITY FULL tables (TG_ARGV[1] = 'full'); otherwise the gateway
-- takes an UPDATE's primary key from the new row.
create function rowcast.capture() returns trigger
language plpgsql security definer as $$
declare
    owner_col pg_catalog.text := TG_ARGV[0];
    new_row   pg_catalog.jsonb;
    old_row   pg_catalog.jsonb;
begin
    if TG_OP OPERATOR(pg_catalog.<>) 'DELETE' then
        new_row := pg_catalog.to_jsonb(NEW);
    end if;
    if TG_OP OPERATOR(pg_catalog.=) 'DELETE' or TG_ARGV[1] OPERATOR(pg_catalog.=) 'full' then
        old_row := pg_catalog.to_jsonb(OLD);
    end if;
    insert into rowcast.changes (schema_name, table_name, op, owner, record, old_record)
    values (TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP,
            case when owner_col OPERATOR(pg_catalog.=) '' then null
                 when TG_OP OPERATOR(pg_catalog.=) 'DELETE' then old_row OPERATOR(pg_catalog.->>) owner_col
                 else new_row OPERATOR(pg_catalog.->>) owner_col end,
            new_row, old_row);
    -- A listener that has not been seen for 30 s is presumed dead: ringing for
    -- it would only fill the notify queue.
    if exists (select 1 from rowcast.listeners
               where idle and seen_at OPERATOR(pg_catalog.>)
                     (pg_catalog.now() OPERATOR(pg_catalog.-) '30 seconds'::pg_catalog.interval)) then
        perform pg_catalog.pg_notify('rowcast_changes', '');
    end if;
    return null;
end $$;

-- enable(): install capture on a table. Idempotent; a second call replaces the
-- visibility rule. Run it again after changing the table's REPLICA IDENTITY.
create function rowcast.enable(tbl regclass, owner_column text default null, public boolean default false)
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
    if not exists (select 1 from pg_index where indrelid = tbl and indisprimary) then
        raise exception 'rowcast.enable(%): the table needs a primary key', tbl;
    end if;
    insert into rowcast.tables (relid, owner_column, is_public)
    values (tbl, owner_column, public)
    on conflict (relid) do update
        set owner_column = excluded.owner_column, is_public = excluded.is_public, enabled_at = now();
    execute format('drop trigger if exists rowcast_capture on %s', tbl);
    execute format('create trigger rowcast_capture after insert or update or delete on %s '
                   'for each row execute function rowcast.capture(%L, %L)', tbl, coalesce(owner_column, ''),
                   (select case relreplident when 'f' then 'full' else '' end from pg_class where oid = tbl));
    -- Gateways reload their table list on this channel.
    perform pg_notify('rowcast_tables', tbl::text);
end $$;

create function rowcast.disable(tbl regclass) returns void language plpgsql as $$
begin
    execute format('drop trigger if exists rowcast_capture on %s', tbl);
    delete from rowcast.tables where relid = tbl;
    perform pg_notify('rowcast_tables', tbl::text);
end $$;
