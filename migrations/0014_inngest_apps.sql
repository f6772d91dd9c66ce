-- Inngest apps synced to this rowcast (their serve handler's PUT ->
-- POST /fn/register), and the functions each declared at its last sync.
-- A new sync of an app replaces its functions: one it no longer declares
-- is deleted. A function's id is the SDK's composite "<app id>-<fn id>".
create table rowcast.inngest_apps (
    id         text primary key,
    url        text not null,
    sdk        text,
    framework  text,
    synced_at  timestamptz not null default now()
);

create table rowcast.inngest_functions (
    id         text primary key,
    app_id     text not null references rowcast.inngest_apps (id) on delete cascade,
    name       text not null,
    triggers   jsonb not null,
    -- the function's whole entry of the register body (steps, retries, concurrency, ...)
    config     jsonb not null,
    updated_at timestamptz not null default now()
);
create index inngest_functions_app on rowcast.inngest_functions (app_id);
