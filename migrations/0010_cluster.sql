-- Many gateways on one database: Postgres is their bus, through the change
-- log every gateway already reads, so no other service or protocol is needed.
--
-- - rowcast.nodes: one row per running gateway, its heartbeat. A gateway
--   whose heartbeat is older than the presence timeout is dead: any live one
--   deletes it and its presence rows.
-- - rowcast.presence: who is present on which topic, one row per channel
--   that tracked, written by the gateway holding that channel. Changes to it
--   reach every gateway through the log (the capture trigger), which turns
--   another gateway's rows into presence_state and presence_diff for its own
--   channels; a dead gateway's deleted rows become leaves everywhere.
-- - rowcast.publish(): a broadcast sent by a client or the REST API on one
--   gateway, for the others (the sender delivered it to its own channels).
--   It goes straight into the log, as rowcast.broadcast rows, and rings the
--   doorbell the way capture() does.
create table rowcast.nodes (
    id      uuid primary key,
    seen_at timestamptz not null default now()
);

create table rowcast.presence (
    node    uuid not null,
    sub     bigint not null,
    topic   text not null,
    private boolean not null,
    key     text not null,
    meta    jsonb not null,
    primary key (node, sub)
);

create trigger rowcast_capture after insert or update or delete on rowcast.nodes
    for each row execute function rowcast.capture('', '');
create trigger rowcast_capture after insert or update or delete on rowcast.presence
    for each row execute function rowcast.capture('', '');

create function rowcast.publish(record jsonb) returns void language plpgsql as $$
begin
    insert into rowcast.changes (schema_name, table_name, op, record) values ('rowcast', 'broadcast', 'INSERT', record);
    if exists (select 1 from rowcast.listeners where idle and seen_at > now() - interval '30 seconds') then
        perform pg_notify('rowcast_changes', '');
    end if;
end $$;

-- Only the schema's owner (the gateway) touches these (see 0003).
revoke all on rowcast.nodes, rowcast.presence from public;
revoke all on function rowcast.publish(jsonb) from public;
