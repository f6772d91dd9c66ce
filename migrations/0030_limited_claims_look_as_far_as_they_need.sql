-- A limited type's batch claim looks at as many due jobs as it needs
-- (issue 13). It read and ranked the first 64 due jobs of the type every time,
-- a heap fetch each for the user, to take at most the runner's free slots
-- (ten in the benchmark): most of what a limited claim costs beyond an
-- unlimited one, and a claim's round trip sets the pace of a drain. It now
-- ranks the first `2 * room` and reads all 64 only when those hold fewer than
-- `room` eligible jobs, which takes the same jobs (see the comment inside).
--
-- A freed place under a type's limits rings the runners only when a claim
-- left due jobs behind for those limits (issue 13). Every completion of a
-- limited type rang (0008): a NOTIFY at each group commit, which wakes every
-- listening session of the database and the runners behind them, on the two
-- cores the drain runs on. In the benchmark, where users rarely reach their
-- limit, the rings cost the limited drain a third of its rate (15,491 against
-- 10,539 jobs/s in one pair of runs with the trigger off and on). Now a
-- limited claim records in rowcast.job_types.waiting whether it left due jobs
-- behind (their users at their limit, or the type full), and the trigger rings
-- only while that is so. Rate-limited types ring as before: their claims go
-- one job at a time through rowcast.claim(), which does not record it.
--
-- A claim that records `waiting` just after a completion read it as false
-- misses that one ring and claims at the next one, or at its poll.

alter table rowcast.job_types add column waiting boolean not null default false;

create or replace function rowcast.ring_freed_slot() returns trigger language plpgsql as $$
begin
    if exists (select 1 from rowcast.job_types t
               where t.type = new.type and (t.concurrency is not null or t.concurrency_per_user is not null)
                 and (t.waiting or t.rate_count is not null)) then
        perform pg_notify('rowcast_jobs', new.type);
    end if;
    return null;
end $$;

-- claim_batch as 0022 with 0024's settings, the two changes above inside.
create or replace function rowcast.claim_batch(want text, worker text, lease_secs double precision, max_jobs integer)
 RETURNS SETOF rowcast.jobs
 LANGUAGE plpgsql
 SET enable_sort TO 'off'
 SET jit TO 'off'
AS $function$
declare
    t      rowcast.job_types;
    job    rowcast.jobs;
    room   int := max_jobs;
    picked uuid[];
    lookahead int;
    capped boolean;
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
                -- Full: a place the running jobs free is worth a ring.
                if not t.waiting then
                    update rowcast.job_types set waiting = true where type = want and not waiting;
                end if;
                return;
            end if;
        end if;
        -- The first `2 * room` due jobs first: when they hold `room` eligible ones, those
        -- are the ones the first 64 would give (a job's place among its user's jobs is the
        -- same in any prefix of the claim order). Only when they hold fewer, all 64.
        lookahead := least(64, room * 2);
        loop
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
                          order by p.priority desc, p.run_at, p.id limit lookahead) c) w
                left join busy on busy.user_id = w.user_id
                where t.concurrency_per_user is null or w.user_id is null
                   or w.nth + coalesce(busy.n, 0) <= t.concurrency_per_user
                order by w.priority desc, w.run_at, w.id
                limit room);
            exit when cardinality(picked) >= room or lookahead >= 64;
            lookahead := 64;
        end loop;
        -- Due jobs left behind for their users' limits: the places their running jobs
        -- free are worth a ring (rowcast.ring_freed_slot); none left, they are not.
        capped := cardinality(picked) < room and exists (
            select 1 from rowcast.jobs p
            where p.type = want and p.status = 'pending' and p.run_at <= now() and p.id <> all(picked));
        if capped is distinct from t.waiting then
            update rowcast.job_types set waiting = capped where type = want and waiting is distinct from capped;
        end if;
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
end $function$;

revoke all on function rowcast.claim_batch(text, text, double precision, int) from public;
revoke all on function rowcast.ring_freed_slot() from public;
