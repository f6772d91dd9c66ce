-- Events sent to rowcast the way the Inngest SDK sends them (POST /e/<key>,
-- inngest.send()) or from SQL (rowcast.send_event, in the caller's own
-- transaction). Kept durably; an event carrying the sender's `id` is stored
-- once per 24 hours, and a repeat answers the first one's id. Starting the
-- functions an event triggers comes with Inngest runs (issue 11, item 3).
create table rowcast.inngest_events (
    id          uuid primary key default gen_random_uuid(),
    name        text not null check (name <> ''),
    data        jsonb not null default '{}',
    "user"      jsonb not null default '{}',
    -- the sender's idempotency key (the event's `id` field)
    event_id    text,
    -- the event's own time, epoch milliseconds
    ts          bigint not null default (extract(epoch from clock_timestamp()) * 1000)::bigint,
    v           text,
    received_at timestamptz not null default now()
);
create index inngest_events_dedupe on rowcast.inngest_events (event_id, received_at) where event_id is not null;
create index inngest_events_by_name on rowcast.inngest_events (name, received_at);

-- Stores one event; returns its id, or the id of the same `event_id` stored
-- in the last 24 hours. The advisory lock serialises senders of one
-- event_id, so two at once store it once.
create function rowcast.send_event(name text, data jsonb default '{}', event_id text default null,
                                   "user" jsonb default '{}', ts bigint default null, v text default null)
returns uuid language plpgsql as $$
#variable_conflict use_column
declare
    found uuid;
begin
    if name is null or name = '' then
        raise exception 'an event needs a name' using errcode = '22023';
    end if;
    if name like 'inngest/%' then
        raise exception 'event names starting with inngest/ are reserved: %', name using errcode = '22023';
    end if;
    if send_event.event_id is not null then
        perform pg_advisory_xact_lock(hashtext('rowcast.event:' || send_event.event_id));
        select e.id into found from rowcast.inngest_events e
        where e.event_id = send_event.event_id and e.received_at > now() - interval '24 hours'
        order by e.received_at limit 1;
        if found is not null then
            return found;
        end if;
    end if;
    insert into rowcast.inngest_events (name, data, "user", event_id, ts, v)
    values (send_event.name, coalesce(send_event.data, '{}'), coalesce(send_event."user", '{}'), send_event.event_id,
            coalesce(send_event.ts, (extract(epoch from clock_timestamp()) * 1000)::bigint), send_event.v)
    returning id into found;
    return found;
end $$;

-- The same narrow door as enqueue (0003): it runs as its owner with a fixed
-- search_path, nothing for PUBLIC, and members of rowcast_enqueue may call it.
alter function rowcast.send_event(text, jsonb, text, jsonb, bigint, text)
    security definer set search_path = pg_catalog, pg_temp;
revoke all on function rowcast.send_event(text, jsonb, text, jsonb, bigint, text) from public;
do $$
begin
    if exists (select 1 from pg_catalog.pg_roles where rolname = 'rowcast_enqueue') then
        grant execute on function rowcast.send_event(text, jsonb, text, jsonb, bigint, text) to rowcast_enqueue;
    end if;
end $$;
