-- Private channels, authorised the way Supabase does it: by the RLS
-- policies an app writes on realtime.messages. A SELECT policy that lets a
-- role see a topic's messages means it may receive on that topic; an INSERT
-- policy that lets it write one means it may send. The gateway asks once per
-- join (and again on a new token), in a transaction it rolls back: as the
-- table's owner it writes one probe message per extension, then switches to
-- the token's role with its claims set as Supabase sets them
-- (request.jwt.claims, request.jwt.claim.sub, request.jwt.claim.role,
-- realtime.topic) and reads, and tries to insert (src/realtime/policies.rs).
--
-- So policies written for Supabase work unchanged, this migration supplies
-- what they expect when the database lacks it: the roles anon, authenticated
-- and service_role (NOLOGIN; created only by a user who may create roles),
-- the gateway's membership in them (it must be able to SET ROLE), and the
-- auth.uid(), auth.jwt() and auth.role() helpers. Every object is created
-- only when absent; a Supabase database keeps its own.

do $$
declare
    r text;
begin
    foreach r in array array['anon', 'authenticated', 'service_role'] loop
        if not exists (select 1 from pg_catalog.pg_roles where rolname = r) then
            if not (select rolcreaterole or rolsuper from pg_catalog.pg_roles where rolname = current_user) then
                raise notice 'rowcast: role % not created (needs CREATEROLE); private channels refuse tokens with that role', r;
                continue;
            end if;
            -- Supabase's service_role bypasses RLS; only a superuser may grant that.
            execute format('create role %I nologin%s', r,
                           case when r = 'service_role' and (select rolsuper from pg_catalog.pg_roles where rolname = current_user)
                                then ' bypassrls' else '' end);
        end if;
        -- The gateway (this user) switches to the token's role to ask the policies.
        if not (select rolsuper from pg_catalog.pg_roles where rolname = current_user)
           and not pg_catalog.pg_has_role(current_user, r, 'member') then
            execute format('grant %I to %I', r, current_user);
        end if;
        execute format('grant usage on schema realtime to %I', r);
        execute format('grant select, insert on realtime.messages to %I', r);
    end loop;
end $$;

-- Without RLS every role could read every message; with it and no policy, none can.
alter table realtime.messages enable row level security;

-- The probe rows the gateway writes while asking the policies are not messages.
drop trigger if exists rowcast_capture on realtime.messages;
create trigger rowcast_capture after insert on realtime.messages
    for each row when (coalesce(current_setting('rowcast.probing', true), '') <> 'on')
    execute function rowcast.capture('', '');

create schema if not exists auth;
grant usage on schema auth to public;

do $$
begin
    if to_regprocedure('auth.jwt()') is null then
        create function auth.jwt() returns jsonb language sql stable as $f$
            select coalesce(nullif(current_setting('request.jwt.claim', true), ''),
                            nullif(current_setting('request.jwt.claims', true), ''))::jsonb
        $f$;
    end if;
    if to_regprocedure('auth.uid()') is null then
        create function auth.uid() returns uuid language sql stable as $f$
            select coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                            (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))::uuid
        $f$;
    end if;
    if to_regprocedure('auth.role()') is null then
        create function auth.role() returns text language sql stable as $f$
            select coalesce(nullif(current_setting('request.jwt.claim.role', true), ''),
                            (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'))::text
        $f$;
    end if;
end $$;

grant execute on function auth.jwt(), auth.uid(), auth.role() to public;
