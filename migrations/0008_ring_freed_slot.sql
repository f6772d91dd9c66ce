-- A running job that stops running (completed, failed, waiting to retry,
-- cancelled, rescued, expired or released) frees a place under its type's
-- `concurrency` and `concurrency_per_user`. Every runner may be waiting for
-- that place, not only the one whose job it was, so the change rings the
-- runners' doorbell for such types. Without it, once one runner claimed up
-- to the limit in one batch (0007), only that runner saw the places come
-- free and the others waited for their poll, even with free slots.
-- Postgres folds repeated notifications of one transaction, so a batch of
-- completions rings once per type. Types without those limits never call
-- this function past the trigger's WHEN.
create function rowcast.ring_freed_slot() returns trigger language plpgsql as $$
begin
    if exists (select 1 from rowcast.job_types t
               where t.type = new.type and (t.concurrency is not null or t.concurrency_per_user is not null)) then
        perform pg_notify('rowcast_jobs', new.type);
    end if;
    return null;
end $$;

create trigger jobs_ring_freed_slot after update of status on rowcast.jobs
    for each row when (old.status = 'running' and new.status <> 'running')
    execute function rowcast.ring_freed_slot();

-- As for every function here (0003): nothing for PUBLIC.
revoke all on function rowcast.ring_freed_slot() from public;
