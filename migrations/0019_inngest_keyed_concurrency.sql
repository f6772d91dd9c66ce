-- Inngest `concurrency {limit, key, scope?}` with a key other than the run's
-- owner (the owner's is the job type's concurrency_per_user, enforced at
-- claim). A run that is about to call its function takes a slot here for
-- each such limit: `scope` is the function's id (scope "fn") or "env" /
-- "account" (shared by every function using that key), `key` the key
-- expression's value for the run's event. A slot counts only while its job
-- is running, so a run that retries, ends, is cancelled or is rescued gives
-- its slot back without a write; the row itself goes when the next taker of
-- that key sweeps it, or with the job.
create table rowcast.inngest_slots (
    scope  text not null,
    key    text not null,
    job_id uuid not null references rowcast.jobs (id) on delete cascade,
    primary key (scope, key, job_id)
);
create index inngest_slots_job on rowcast.inngest_slots (job_id);

-- Inngest `throttle {limit, period, burst?, key?}` keyed by anything but the
-- owner (the owner's is the job type's start rate, enforced at claim): a run
-- records its start here before its first call; a run that finds `limit +
-- burst` starts in the last `period` waits back in pending until the oldest
-- of them leaves the window. One row per run, so a retried first call does
-- not start it twice.
create table rowcast.inngest_throttle_starts (
    scope      text not null,
    key        text not null,
    job_id     uuid not null,
    started_at timestamptz not null default now(),
    primary key (scope, key, job_id)
);
create index inngest_throttle_starts_window on rowcast.inngest_throttle_starts (scope, key, started_at);
create index inngest_throttle_starts_age on rowcast.inngest_throttle_starts (started_at);
