-- Inngest `rateLimit {limit, period, key?}`: at most `limit` runs of a
-- function per key start in any `period`; events beyond that start no run
-- (they are skipped, not queued, as Inngest does). The dispatcher records
-- each start here and counts the window under an advisory lock per
-- (function, key), so dispatchers on several runners admit exactly `limit`.
create table rowcast.inngest_rate_starts (
    function_id text not null,
    key         text not null,
    started_at  timestamptz not null default now()
);
create index inngest_rate_starts_window on rowcast.inngest_rate_starts (function_id, key, started_at);
-- Pruning: Inngest periods are at most 24 hours.
create index inngest_rate_starts_age on rowcast.inngest_rate_starts (started_at);
