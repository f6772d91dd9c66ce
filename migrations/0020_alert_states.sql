-- Whether each (job type, alert) is crossed, as the runners' alert watchers
-- last judged it. A watcher flips a state with one compare-and-set insert,
-- and only the watcher whose statement flipped it POSTs the webhook, so
-- any number of runners send each crossing (and each clearing) once.
create table rowcast.alert_states (
    type       text not null,
    alert      text not null,
    crossed    boolean not null,
    changed_at timestamptz not null default now(),
    primary key (type, alert)
);
