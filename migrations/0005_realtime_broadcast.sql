-- Broadcast from the database, with Supabase's own names and signatures, so
-- triggers written for Supabase run unchanged: realtime.send(),
-- realtime.send_binary(), realtime.broadcast_changes(), realtime.topic() and
-- the realtime.messages table they write to.
--
-- A message goes out through the same durable path as a row change: the
-- capture trigger copies each inserted message into rowcast.changes in the
-- sender's transaction, so it is delivered after commit, never before and
-- never for a rolled-back transaction, and a gateway that reconnects reads
-- what it missed from the log. The gateway recognises realtime.messages rows
-- in the log and broadcasts them; the table is never enabled for
-- postgres_changes (a subscriber of it would see every private message).
--
-- A database that is already a Supabase project has this schema: every
-- object here is created only when absent, and the trigger attaches to the
-- existing table.

create schema if not exists realtime;

create table if not exists realtime.messages (
    id          uuid not null default gen_random_uuid(),
    topic       text not null,
    extension   text not null,
    payload     jsonb,
    event       text,
    private     boolean default false,
    updated_at  timestamp not null default now(),
    inserted_at timestamp not null default now(),
    primary key (id, inserted_at)
);
-- Supabase's newer send_binary() writes here; older projects lack the column.
alter table realtime.messages add column if not exists binary_payload bytea;
-- Pruning (by the gateway, after the change retention and at least a day,
-- see src/changes/listener.rs) scans by age.
create index if not exists messages_inserted_at on realtime.messages (inserted_at);

drop trigger if exists rowcast_capture on realtime.messages;
create trigger rowcast_capture after insert on realtime.messages
    for each row execute function rowcast.capture('', '');

do $$
begin
    -- realtime.topic(): the topic of the message being sent, for RLS policies.
    if to_regprocedure('realtime.topic()') is null then
        create function realtime.topic() returns text language sql stable as
            $f$ select nullif(current_setting('realtime.topic', true), '')::text $f$;
    end if;

    -- realtime.send(): one broadcast. As on Supabase, a failure is a warning,
    -- not an error: a broadcast must never abort the transaction that sends it.
    -- SECURITY DEFINER with a fixed search_path, so any role allowed to call it
    -- can send without rights on the table (who may *receive* a private
    -- message is decided when a channel joins).
    if to_regprocedure('realtime.send(jsonb, text, text, boolean)') is null then
        create function realtime.send(payload jsonb, event text, topic text, private boolean default true)
        returns void language plpgsql security definer set search_path = pg_catalog, pg_temp as $f$
        begin
            begin
                perform set_config('realtime.topic', topic, true);
                insert into realtime.messages (payload, event, topic, private, extension)
                values (payload, event, topic, private, 'broadcast');
            exception when others then
                raise warning 'ErrorSendingBroadcastMessage: %', sqlerrm;
            end;
        end $f$;
    end if;

    -- realtime.send_binary(): one broadcast whose payload is bytes (delivered as
    -- a binary frame to v2 sockets).
    if to_regprocedure('realtime.send_binary(bytea, text, text, boolean)') is null then
        create function realtime.send_binary(payload bytea, event text, topic text, private boolean default true)
        returns void language plpgsql security definer set search_path = pg_catalog, pg_temp as $f$
        begin
            begin
                perform set_config('realtime.topic', topic, true);
                insert into realtime.messages (binary_payload, event, topic, private, extension)
                values (payload, event, topic, private, 'broadcast');
            exception when others then
                raise warning 'ErrorSendingBroadcastMessage: %', sqlerrm;
            end;
        end $f$;
    end if;

    -- realtime.broadcast_changes(): a row change as a broadcast, from a row trigger.
    if to_regprocedure('realtime.broadcast_changes(text, text, text, text, text, record, record, text)') is null then
        create function realtime.broadcast_changes(topic_name text, event_name text, operation text, table_name text,
                                                   table_schema text, new record, old record, level text default 'ROW')
        returns void language plpgsql as $f$
        begin
            if level = 'STATEMENT' then
                raise exception 'function can only be triggered for each row, not for each statement';
            end if;
            if operation not in ('INSERT', 'UPDATE', 'DELETE') then
                raise exception 'Unexpected operation type: %', operation;
            end if;
            perform realtime.send(
                jsonb_build_object('old_record', old, 'record', new, 'operation', operation,
                                   'table', table_name, 'schema', table_schema),
                event_name, topic_name);
        end $f$;
    end if;
end $$;

-- Callable by every role, as on Supabase (its app roles call these from triggers).
grant usage on schema realtime to public;
grant execute on function realtime.topic() to public;
grant execute on function realtime.send(jsonb, text, text, boolean) to public;
grant execute on function realtime.send_binary(bytea, text, text, boolean) to public;
grant execute on function realtime.broadcast_changes(text, text, text, text, text, record, record, text) to public;
