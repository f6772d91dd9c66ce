-- Inngest runs (issue 11, items 2-4). A stored event starts a run (a job
-- whose type is the function's id) of every function it triggers; the
-- runner's dispatcher does that after the event commits, because trigger
-- `if` expressions are CEL and evaluated in rowcast. An event stays
-- undispatched until then, so a crash between commit and dispatch loses
-- nothing: the next dispatcher takes it.

alter table rowcast.inngest_events add column dispatched_at timestamptz;
-- Events stored before runs existed start nothing.
update rowcast.inngest_events set dispatched_at = received_at;
create index inngest_events_undispatched on rowcast.inngest_events (received_at, id) where dispatched_at is null;

-- The dispatcher's doorbell: once per inserting statement, whoever inserts
-- (send_event, POST /e/<key>, the run-end trigger below).
create function rowcast.ring_events() returns trigger language plpgsql as $$
begin
    perform pg_notify('rowcast_events', '');
    return null;
end $$;
create trigger inngest_events_ring after insert on rowcast.inngest_events
    for each statement execute function rowcast.ring_events();

-- When a run ends, the events Inngest emits, in the same transaction as
-- the ending: `inngest/function.finished` always (with `result` or
-- `error`), and `inngest/function.failed` when it failed, which is what
-- `onFailure` handlers and plain functions on that event receive; a
-- cancelled run also gets `inngest/function.cancelled`. The error's name
-- is read back from the job's error text, which rowcast writes as
-- JavaScript prints an error ("NonRetriableError: ..."). Runs started by
-- these events emit none themselves, so a failing failure handler cannot
-- start itself again.
create function rowcast.inngest_run_ended() returns trigger language plpgsql as $$
declare
    ev    jsonb := new.input -> 'event';
    base  jsonb;
    err   jsonb;
begin
    if not exists (select 1 from rowcast.inngest_functions f where f.id = new.type)
       or coalesce(ev ->> 'name', '') like 'inngest/function.%' then
        return null;
    end if;
    base := jsonb_build_object('function_id', new.type, 'run_id', new.id, 'event', ev,
                               'events', coalesce(new.input -> 'events', jsonb_build_array(ev)));
    if new.status = 'completed' then
        insert into rowcast.inngest_events (name, data) values ('inngest/function.finished', base || jsonb_build_object('result', new.output));
        return null;
    end if;
    err := jsonb_build_object(
        'name', coalesce(substring(new.error from '^([A-Za-z_$][A-Za-z0-9_$]*): '), 'Error'),
        'message', coalesce(regexp_replace(new.error, '^[A-Za-z_$][A-Za-z0-9_$]*: ', ''), new.status));
    if new.status = 'failed' then
        insert into rowcast.inngest_events (name, data) values ('inngest/function.failed', base || jsonb_build_object('error', err));
    else
        insert into rowcast.inngest_events (name, data) values ('inngest/function.cancelled', base);
    end if;
    insert into rowcast.inngest_events (name, data) values ('inngest/function.finished', base || jsonb_build_object('error', err));
    return null;
end $$;
-- Runs carry their event in the input (`{event, events}`); checking that in
-- WHEN (C, no function call) keeps the trigger off every other job's end.
create trigger jobs_inngest_run_ended after update of status on rowcast.jobs
    for each row when (old.status is distinct from new.status and new.status in ('completed', 'failed', 'cancelled')
                       and new.input ? 'event')
    execute function rowcast.inngest_run_ended();

-- Trigger functions only, like every rowcast function: nothing for PUBLIC (0003).
revoke all on function rowcast.ring_events() from public;
revoke all on function rowcast.inngest_run_ended() from public;
