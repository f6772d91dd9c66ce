-- A limited type's claim finds the users at their concurrency_per_user
-- limit once, then takes the first pending job of anyone else, instead of
-- counting the candidate's owner's running jobs for every row it looks at.
-- That count walked the running-jobs index per candidate, dead entries of
-- finished jobs included, so a claim grew with the churn and with the
-- number of pending jobs ahead of the first eligible one (issue 13: a
-- limited type drained at 65 % of an unlimited one, and 100,000 pending
-- jobs of one user at their limit delayed everyone else's pickup by 240 ms).
-- Same guarantees: the advisory lock still serialises a type's claims, so
-- the set of users at their limit cannot change under a claim.
create or replace function rowcast.claim(want text, worker text, lease_secs double precision)
returns rowcast.jobs language plpgsql as $$
declare
    t       rowcast.job_types;
    job     rowcast.jobs;
    at_cap  text[] := '{}';
begin
    select * into t from rowcast.job_types where type = want;
    if t.concurrency is not null or t.concurrency_per_user is not null or t.rate_count is not null then
        perform pg_advisory_xact_lock(hashtext('rowcast.claim:' || want));
        if t.concurrency is not null
           and (select count(*) from rowcast.jobs where type = want and status = 'running') >= t.concurrency then
            return null;
        end if;
    end if;
    if t.concurrency_per_user is not null then
        at_cap := array(select r.user_id from rowcast.jobs r
                        where r.type = want and r.status = 'running' and r.user_id is not null
                        group by r.user_id having count(*) >= t.concurrency_per_user);
    end if;
    select * into job from rowcast.jobs j
    where j.type = want and j.status = 'pending' and j.run_at <= now()
      and (j.user_id is null or j.user_id <> all(at_cap))
      and (t.rate_count is null or j.user_id is null
           or (select count(*) from rowcast.job_starts s
               where s.type = want and s.user_id = j.user_id
                 and s.started_at > now() - make_interval(secs => t.rate_window_secs)) < t.rate_count)
    order by j.priority desc, j.run_at, j.id
    limit 1
    for update skip locked;
    if job.id is null then
        return null;
    end if;
    update rowcast.jobs set status = 'running', attempts = attempts + 1, started_at = now(), completed_at = null
    where id = job.id
    returning * into job;
    insert into rowcast.job_leases (job_id, attempt, worker, expires_at)
    values (job.id, job.attempts, worker, now() + make_interval(secs => lease_secs))
    on conflict (job_id) do update set attempt = excluded.attempt, worker = excluded.worker, expires_at = excluded.expires_at;
    if t.rate_count is not null and job.user_id is not null then
        insert into rowcast.job_starts (type, user_id) values (want, job.user_id);
    end if;
    return job;
end $$;

-- As for every function here (0003): nothing for PUBLIC.
revoke all on function rowcast.claim(text, text, double precision) from public;
