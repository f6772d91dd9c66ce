-- The upkeep's sweep for jobs pending or running past their type's limits,
-- run every tick (at most a second) for every type, reads only the jobs it
-- fails. Written inline it filtered the type's rows by age: no index leads
-- with `run_at` after the type, so Postgres read the whole table, finished
-- jobs included (18.5 ms a type a second behind 100,000 pending jobs, and
-- growing with the backlog and with the history kept).
--
-- Pending jobs are found through `jobs_claimable` (type, priority desc,
-- run_at, id): one range per priority level present, each bounded by the
-- cutoff, the levels found by skipping from one to the next. Running jobs
-- through `jobs_running`, which holds only as many as run. The row's status
-- and age are checked again on the locked row, so a job claimed or finished
-- meanwhile is left alone.

create function rowcast.expire_stuck(want text, pending_secs bigint, running_secs bigint)
returns setof rowcast.jobs language plpgsql
set enable_seqscan = off set jit = off as $$
declare
    pending_cutoff timestamptz := now() - make_interval(secs => pending_secs::double precision);
    running_cutoff timestamptz := now() - make_interval(secs => running_secs::double precision);
begin
    return query
    with recursive levels(p) as (
        (select j.priority from rowcast.jobs j
         where j.type = want and j.status = 'pending'
         order by j.priority desc limit 1)
        union all
        select (select j.priority from rowcast.jobs j
                where j.type = want and j.status = 'pending' and j.priority < l.p
                order by j.priority desc limit 1)
        from levels l where l.p is not null),
    stuck as (
        select j.id from levels l
        join rowcast.jobs j on j.type = want and j.status = 'pending' and j.priority = l.p and j.run_at < pending_cutoff
        union all
        select j.id from rowcast.jobs j
        where j.type = want and j.status = 'running' and j.started_at < running_cutoff)
    update rowcast.jobs j set status = 'failed', completed_at = now(),
        error = case j.status when 'pending' then format('expired: still pending after %s s', pending_secs)
                              else format('timed out: still running after %s s', running_secs) end
    from stuck s
    where j.id = s.id
      and ((j.status = 'pending' and j.run_at < pending_cutoff)
        or (j.status = 'running' and j.started_at < running_cutoff))
    returning j.*;
end $$;

-- As for every function here (0003): nothing for PUBLIC.
revoke all on function rowcast.expire_stuck(text, bigint, bigint) from public;
