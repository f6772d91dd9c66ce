-- The job runner's tables. rowcast.jobs holds only what a user may watch
-- (status, progress, message, error...) and is change-captured like any app
-- table, so browsers follow it with supabase-js. Everything a runner needs
-- privately lives beside it: leases (renewed by heartbeat, so heartbeats
-- never reach browsers), memoized step outputs, rate-limit starts, cron slots.

-- Per-type settings that SQL callers and claims need; runners upsert them
-- from their TOML config at start (runners sharing a database should share
-- one config).
create table rowcast.job_types (
    type                 text primary key,
    max_attempts         int not null default 5 check (max_attempts >= 1),
    concurrency          int check (concurrency >= 1),
    concurrency_per_user int check (concurrency_per_user >= 1),
    rate_count           int check (rate_count >= 1),
    rate_window_secs     double precision check (rate_window_secs > 0),
    max_active_per_user  int check (max_active_per_user >= 1),
    updated_at           timestamptz not null default now()
);

create table rowcast.jobs (
    id              uuid primary key default gen_random_uuid(),
    type            text not null,
    user_id         text,
    status          text not null default 'pending'
                    check (status in ('pending', 'running', 'completed', 'failed', 'cancelled')),
    progress        int not null default 0 check (progress between 0 and 100),
    message         text,
    input           jsonb not null default '{}',
    output          jsonb,
    error           text,
    -- attempts counts claims; every transition a runner makes is a
    -- compare-and-set on (status = 'running', attempts = its attempt), so a
    -- worker whose job was rescued or cancelled can never write to it again.
    attempts        int not null default 0,
    max_attempts    int not null default 5 check (max_attempts >= 1),
    idempotency_key text,
    run_at          timestamptz not null default now(),
    priority        int not null default 0,
    -- A bulk enqueue's children point at a parent whose progress counts them.
    parent_id       uuid references rowcast.jobs (id) on delete cascade,
    created_at      timestamptz not null default now(),
    started_at      timestamptz,
    completed_at    timestamptz,
    updated_at      timestamptz not null default now()
);

-- One active job per (type, user, idempotency key): enforced by the index,
-- never by read-then-write.
create unique index jobs_idempotency_active on rowcast.jobs (type, coalesce(user_id, ''), idempotency_key)
    where idempotency_key is not null and status in ('pending', 'running');
create index jobs_claimable on rowcast.jobs (type, priority desc, run_at, id) where status = 'pending';
create index jobs_running on rowcast.jobs (type, user_id) where status = 'running';
create index jobs_by_user on rowcast.jobs (user_id, created_at desc);
create index jobs_children on rowcast.jobs (parent_id) where parent_id is not null;
create index jobs_finished on rowcast.jobs (status, completed_at) where status in ('completed', 'failed', 'cancelled');

-- The attempt a runner holds; expired leases are rescued by any runner.
create table rowcast.job_leases (
    job_id     uuid primary key references rowcast.jobs (id) on delete cascade,
    attempt    int not null,
    worker     text not null,
    expires_at timestamptz not null
);
create index job_leases_expiry on rowcast.job_leases (expires_at);

-- Memoized step outputs: a retried job resumes after its last finished step.
create table rowcast.job_steps (
    job_id     uuid not null references rowcast.jobs (id) on delete cascade,
    step_id    text not null,
    seq        int not null,
    output     jsonb,
    created_at timestamptz not null default clock_timestamp(),
    primary key (job_id, step_id)
);

-- Claims per (type, user) for rate limits; pruned with the jobs.
create table rowcast.job_starts (
    type       text not null,
    user_id    text not null,
    started_at timestamptz not null default now()
);
create index job_starts_window on rowcast.job_starts (type, user_id, started_at);

-- One row per fired cron slot: the primary key makes each slot fire once
-- across any number of runners.
create table rowcast.cron_slots (
    name   text not null,
    slot   timestamptz not null,
    job_id uuid,
    primary key (name, slot)
);

create function rowcast.touch_job() returns trigger language plpgsql as $$
begin
    new.updated_at := clock_timestamp();
    return new;
end $$;
create trigger jobs_touch before update on rowcast.jobs
    for each row execute function rowcast.touch_job();

-- A child's status change recounts its parent. The parent row is locked
-- first, so the count (a later statement, a later snapshot) sees every
-- sibling that finished before us: two last children finishing at once
-- cannot both miss each other.
create function rowcast.roll_up_parent() returns trigger language plpgsql as $$
declare
    total int; done int; failed int;
begin
    perform 1 from rowcast.jobs where id = new.parent_id for update;
    select count(*),
           count(*) filter (where status in ('completed', 'failed', 'cancelled')),
           count(*) filter (where status in ('failed', 'cancelled'))
      into total, done, failed
      from rowcast.jobs where parent_id = new.parent_id;
    update rowcast.jobs set
        progress = done * 100 / greatest(total, 1),
        message = format('%s of %s jobs finished', done, total),
        status = case when done < total then 'running' when failed > 0 then 'failed' else 'completed' end,
        error = case when failed > 0 then format('%s of %s jobs failed or were cancelled', failed, total) end,
        completed_at = case when done = total then clock_timestamp() end
    where id = new.parent_id and status <> 'cancelled';
    return null;
end $$;
create trigger jobs_roll_up after update of status on rowcast.jobs
    for each row when (new.parent_id is not null and new.status is distinct from old.status)
    execute function rowcast.roll_up_parent();

-- Enqueue from SQL, in the caller's own transaction. Raises 23505 with the
-- active job's id in DETAIL for a duplicate idempotency key, and 53400 when
-- the user has max_active_per_user active jobs of this type. Rings the
-- runners' doorbell (once per enqueue: enqueues are far rarer than row writes).
create function rowcast.enqueue(
    job_type        text,
    input           jsonb default '{}',
    user_id         text default null,
    idempotency_key text default null,
    run_at          timestamptz default null,
    priority        int default 0,
    max_attempts    int default null,
    parent_id       uuid default null
) returns rowcast.jobs language plpgsql as $$
-- Bare names are columns; the parameters are always written enqueue.<name>.
#variable_conflict use_column
declare
    settings rowcast.job_types;
    job      rowcast.jobs;
    active   uuid;
begin
    select * into settings from rowcast.job_types t where t.type = job_type;
    if settings.max_active_per_user is not null and enqueue.user_id is not null then
        -- Serialise admissions per (type, user): the count below is then exact.
        perform pg_advisory_xact_lock(hashtext('rowcast.admit:' || job_type || ':' || enqueue.user_id));
        if (select count(*) from rowcast.jobs j
            where j.type = job_type and j.user_id = enqueue.user_id and j.status in ('pending', 'running'))
           >= settings.max_active_per_user then
            raise exception 'too many active % jobs: at most % may be pending or running per user', job_type, settings.max_active_per_user
                using errcode = '53400';
        end if;
    end if;
    insert into rowcast.jobs as j (type, user_id, input, idempotency_key, run_at, priority, max_attempts, parent_id)
    values (job_type, enqueue.user_id, coalesce(enqueue.input, '{}'), enqueue.idempotency_key,
            coalesce(enqueue.run_at, now()), coalesce(enqueue.priority, 0),
            coalesce(enqueue.max_attempts, settings.max_attempts, 5), enqueue.parent_id)
    on conflict (type, coalesce(user_id, ''), idempotency_key)
        where idempotency_key is not null and status in ('pending', 'running')
    do nothing
    returning * into job;
    if job.id is null then
        select j.id into active from rowcast.jobs j
        where j.type = job_type and coalesce(j.user_id, '') = coalesce(enqueue.user_id, '')
          and j.idempotency_key = enqueue.idempotency_key and j.status in ('pending', 'running');
        raise exception 'a % job with this idempotency key is already active', job_type
            using errcode = '23505', detail = active::text;
    end if;
    if job.run_at <= now() then
        perform pg_notify('rowcast_jobs', job_type);
    end if;
    return job;
end $$;

-- Claim one runnable job of `want` for `worker`, honouring the type's
-- limits. Limited types serialise their claims with a transaction-scoped
-- advisory lock, and each check below is its own statement, so it sees
-- every claim committed before the lock was granted. Unlimited types take
-- the plain SKIP LOCKED path.
create function rowcast.claim(want text, worker text, lease_secs double precision)
returns rowcast.jobs language plpgsql as $$
declare
    t   rowcast.job_types;
    job rowcast.jobs;
begin
    select * into t from rowcast.job_types where type = want;
    if t.concurrency is not null or t.concurrency_per_user is not null or t.rate_count is not null then
        perform pg_advisory_xact_lock(hashtext('rowcast.claim:' || want));
        if t.concurrency is not null
           and (select count(*) from rowcast.jobs where type = want and status = 'running') >= t.concurrency then
            return null;
        end if;
    end if;
    select * into job from rowcast.jobs j
    where j.type = want and j.status = 'pending' and j.run_at <= now()
      and (t.concurrency_per_user is null or j.user_id is null
           or (select count(*) from rowcast.jobs r
               where r.type = want and r.user_id = j.user_id and r.status = 'running') < t.concurrency_per_user)
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

select rowcast.enable('rowcast.jobs', owner_column => 'user_id');
