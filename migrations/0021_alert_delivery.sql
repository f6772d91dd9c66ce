-- Alert webhooks are delivered at least once. A flip stores the notice it
-- owes in `pending` (the POST body); it is cleared when the webhook answers
-- 2xx. Until then any runner's watcher may send it again once `retry_at`
-- is due, claiming it by moving `retry_at` ahead (one statement, so two
-- watchers never send the same retry at once), with a backoff that doubles
-- per attempt. A newer flip replaces an undelivered notice: the webhook
-- learns the latest state, not every state in between.
alter table rowcast.alert_states
    add column pending  jsonb,
    add column attempts int not null default 0,
    add column retry_at timestamptz not null default now();
