-- A type with `concurrency` or `concurrency_per_user` (and no rate limit)
-- claims its batch in one pass instead of one rowcast.claim() call per job
-- (issue 13: the per-job loop held the limited drain near 60 % of the
-- unlimited one). Under the same advisory lock as before, the batch
-- statement counts the type's running jobs once, per user and in total,
-- looks at the first 64 due jobs in claim order (as claim() does), and takes,
-- in that order, each user's first `concurrency_per_user - running` of them, up to the
-- type's room and `max_jobs`: the jobs that repeated single claims would
-- take, as each of those sees the claims before it. When there are 64 due
-- jobs and none is eligible (their users are at the limit), it falls back to
-- rowcast.claim(), whose per-user index jump (0016) finds the next eligible
-- job without walking the backlog. Rate-limited types keep the per-job loop.
--
-- It is planned for a table without statistics too (every fresh database
-- until autovacuum's first ANALYZE, up to a minute): the picked jobs are
-- locked by primary key alone and their status read from the locked row,
-- its newest version. With `status = 'pending'` beside `id = any(picked)`
-- Postgres took the per-user partial index of pending jobs, whose last
-- column is the id, and every claim walked all of it (auto_explain: 3-7.5 ms
-- for 9-10 rows with 5,000 pending). The running jobs per user are counted
-- in a materialized CTE: written inline, the planner joined the count in a
-- nested loop that ran it again for each of the 64 candidates (loops=64,
-- 1,000-2,000 heap fetches, 3-4 ms a claim).
create or replace function rowcast.claim_batch(want text, worker text, lease_secs double precision, max_jobs int)
returns setof rowcast.jobs language plpgsql as $$
declare
    t      rowcast.job_types;
    job    rowcast.jobs;
    room   int := max_jobs;
    picked uuid[];
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
    if t.rate_count is null then
        perform pg_advisory_xact_lock(hashtext('rowcast.claim:' || want));
        if t.concurrency is not null then
            room := least(room, t.concurrency - (select count(*) from rowcast.jobs where type = want and status = 'running')::int);
            if room <= 0 then
                return;
            end if;
        end if;
        picked := array(
            -- Counted once: planned inline, without statistics the count ran again
            -- for each of the 64 candidates (a nested loop; 3-4 ms a claim).
            with busy as materialized (
                select r.user_id, count(*)::int as n from rowcast.jobs r
                where r.type = want and r.status = 'running' and r.user_id is not null
                group by r.user_id)
            select w.id from (
                select c.id, c.user_id, c.priority, c.run_at,
                       row_number() over (partition by c.user_id order by c.priority desc, c.run_at, c.id) as nth
                from (select p.id, p.user_id, p.priority, p.run_at from rowcast.jobs p
                      where p.type = want and p.status = 'pending' and p.run_at <= now()
                      order by p.priority desc, p.run_at, p.id limit 64) c) w
            left join busy on busy.user_id = w.user_id
            where t.concurrency_per_user is null or w.user_id is null
               or w.nth + coalesce(busy.n, 0) <= t.concurrency_per_user
            order by w.priority desc, w.run_at, w.id
            limit room);
        -- Fewer than 64 due jobs in all: none is eligible, no need to look past them.
        if cardinality(picked) = 0 and (select count(*) from (
                select 1 from rowcast.jobs p where p.type = want and p.status = 'pending' and p.run_at <= now()
                limit 64) seen) < 64 then
            return;
        end if;
        if cardinality(picked) > 0 then
            -- Claims of this type are serialised by the lock above; only a cancel or a rescue can hold a row.
            return query
            -- By primary key only: with `status = 'pending'` beside `id = any(picked)`
            -- a table without statistics yet was planned as a walk of a whole partial
            -- index of pending jobs. The row's status is checked once it is locked.
            with locked as (
                select j.id, j.status from rowcast.jobs j where j.id = any(picked) for update skip locked),
            moved as (
                update rowcast.jobs j set status = 'running', attempts = j.attempts + 1, started_at = now(), completed_at = null
                from locked where j.id = locked.id and locked.status = 'pending'
                returning j.*),
            leased as (
                insert into rowcast.job_leases (job_id, attempt, worker, expires_at)
                select m.id, m.attempts, worker, now() + make_interval(secs => lease_secs) from moved m
                on conflict (job_id) do update set attempt = excluded.attempt, worker = excluded.worker, expires_at = excluded.expires_at)
            select * from moved;
            return;
        end if;
    end if;
    for i in 1..max_jobs loop
        job := rowcast.claim(want, worker, lease_secs);
        exit when job.id is null;
        return next job;
    end loop;
end $$;

-- As for every function here (0003): nothing for PUBLIC.
revoke all on function rowcast.claim_batch(text, text, double precision, int) from public;
