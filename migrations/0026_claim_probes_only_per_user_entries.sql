-- rowcast.claim()'s jump from user to user (0016) reads each user's own
-- entries of jobs_claimable_by_user, whatever the statistics say.
--
-- Its probes named the user by equality (`p.user_id = users.u`), which makes
-- the user column of their claim order redundant: Postgres saw the order as
-- (priority desc, run_at, id), which jobs_claimable gives too, with the user
-- as a filter. With statistics taken while one capped user held the whole
-- backlog, every user was estimated to have that many pending jobs, the two
-- indexes cost the same, and Postgres took jobs_claimable: each other user's
-- probe read the capped user's whole backlog first (20,002 entries a user,
-- 121 ms a claim of 5 jobs behind 20,000; 0.7-1.2 s behind 100,000). The walk
-- over users likewise took jobs_by_user, all jobs of every type and status
-- in user order, filtering out the finished ones.
--
-- Now each probe bounds the user by a range (`>= u and <= u`, the same rows)
-- and orders by the user first, then the claim order: only
-- jobs_claimable_by_user gives that order without sorting, and sorting is off
-- here (0024), incremental sorting too. The walk over users orders the same
-- way, so jobs_by_user (user order only) would need a sort as well. The
-- chosen job is locked by its key alone and its status read from the locked
-- row, as claim_batch does since 0022 (beside `status = 'pending'` a table
-- without statistics was planned as a walk of the per-user index).
create or replace function rowcast.claim(want text, worker text, lease_secs double precision)
returns rowcast.jobs language plpgsql
set enable_sort = off set enable_incremental_sort = off set jit = off
as $$
declare
    t       rowcast.job_types;
    job     rowcast.jobs;
    at_cap  text[] := '{}';
    pick    uuid;
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
    if cardinality(at_cap) > 0 and t.rate_count is null then
        -- The first 64 in claim order, as the plain walk would see them.
        select j.id into pick from (
            select c.id, c.user_id, c.priority, c.run_at from rowcast.jobs c
            where c.type = want and c.status = 'pending' and c.run_at <= now()
            order by c.priority desc, c.run_at, c.id limit 64) j
        where j.user_id is null or j.user_id <> all(at_cap)
        order by j.priority desc, j.run_at, j.id limit 1;
        if pick is null then
            -- Every user with pending jobs, one probe of jobs_claimable_by_user each,
            -- then their first due job. Every probe is ordered by the user, then the
            -- claim order, and bounds the user by a range, not an equality: only that
            -- index gives this order (see above).
            with recursive users(u) as (
                (select p.user_id from rowcast.jobs p where p.type = want and p.status = 'pending' and p.user_id is not null
                 order by p.user_id, p.priority desc, p.run_at, p.id limit 1)
                union all
                select (select p.user_id from rowcast.jobs p where p.type = want and p.status = 'pending' and p.user_id > users.u
                        order by p.user_id, p.priority desc, p.run_at, p.id limit 1)
                from users where users.u is not null),
            heads as (
                select h.id, h.priority, h.run_at from users, lateral (
                    select p.id, p.priority, p.run_at from rowcast.jobs p
                    where p.type = want and p.status = 'pending' and p.user_id >= users.u and p.user_id <= users.u
                      and p.run_at <= now() and users.u <> all(at_cap)
                    order by p.user_id, p.priority desc, p.run_at, p.id limit 1) h
                where users.u is not null
                union all
                (select p.id, p.priority, p.run_at from rowcast.jobs p
                 where p.type = want and p.status = 'pending' and p.user_id is null and p.run_at <= now()
                 order by p.user_id, p.priority desc, p.run_at, p.id limit 1))
            select heads.id into pick from heads order by heads.priority desc, heads.run_at, heads.id limit 1;
        end if;
        if pick is null then
            return null;
        end if;
        -- Claims of this type are serialised by the lock above; only a cancel or a rescue can hold the row.
        select * into job from rowcast.jobs j where j.id = pick for update skip locked;
        if job.status is distinct from 'pending' then
            return null;
        end if;
    else
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
    end if;
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
