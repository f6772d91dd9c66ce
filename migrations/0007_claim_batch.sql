-- Claim up to `max_jobs` runnable jobs of `want` in one statement, so a
-- runner with free slots fills them in one round trip instead of one claim
-- per slot (issue 13: one claim at a time capped the drain near 500 jobs/s).
--
-- Unlimited types take every row in one SKIP LOCKED pass. Types with a
-- limit (concurrency, concurrency_per_user, rate_limit) claim one job at a
-- time through rowcast.claim(), inside this one transaction: each call's
-- checks are statements of their own, so they see the claims this call made
-- before them, and the advisory lock is held from the first until commit.
create function rowcast.claim_batch(want text, worker text, lease_secs double precision, max_jobs int)
returns setof rowcast.jobs language plpgsql as $$
declare
    t   rowcast.job_types;
    job rowcast.jobs;
begin
    select * into t from rowcast.job_types where type = want;
    if t.concurrency is null and t.concurrency_per_user is null and t.rate_count is null then
        return query
        with picked as (
            select j.id from rowcast.jobs j
            where j.type = want and j.status = 'pending' and j.run_at <= now()
            order by j.priority desc, j.run_at, j.id
            limit max_jobs
            for update skip locked),
        moved as (
            update rowcast.jobs j set status = 'running', attempts = j.attempts + 1, started_at = now(), completed_at = null
            from picked where j.id = picked.id
            returning j.*),
        leased as (
            insert into rowcast.job_leases (job_id, attempt, worker, expires_at)
            select m.id, m.attempts, worker, now() + make_interval(secs => lease_secs) from moved m
            on conflict (job_id) do update set attempt = excluded.attempt, worker = excluded.worker, expires_at = excluded.expires_at)
        select * from moved;
        return;
    end if;
    for i in 1..max_jobs loop
        job := rowcast.claim(want, worker, lease_secs);
        exit when job.id is null;
        return next job;
    end loop;
end $$;

-- As for every function here (0003): nothing for PUBLIC.
revoke all on function rowcast.claim_batch(text, text, double precision, int) from public;
