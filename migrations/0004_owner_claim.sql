-- Visibility by any claim, not only `sub`.
--
-- Teams share rows beyond one owner: a job or a decision belongs to an
-- organisation, and every member of it should see it live. Supabase apps say
-- so in RLS with `auth.jwt() -> 'app_metadata' ->> 'org_id'`; rowcast has no
-- per-row SQL check on the fan-out path (it would cost a query per change per
-- subscriber), so the rule stays one comparison evaluated in memory: the
-- owner column against the claim `owner_claim` names. The claim path is
-- dotted (`app_metadata.org_id`); an array claim (`app_metadata.team_ids`)
-- means "any of these". The default, `sub`, keeps every table enabled before
-- this migration meaning what it meant. The gateway parses the path; a path
-- it cannot parse shows the table's rows to the service role only.
--
-- The capture trigger is unchanged: it already records the owner column's
-- value as text, whatever claim it is compared with.

alter table rowcast.tables add column owner_claim text not null default 'sub'
    constraint tables_owner_claim_not_empty check (owner_claim <> '');

-- enable() gains a fourth parameter. A new parameter is a new signature, so
-- the old function goes (a call naming only the first three still resolves
-- to the new one through the default).
drop function rowcast.enable(regclass, text, boolean);

create function rowcast.enable(tbl regclass, owner_column text default null, public boolean default false,
                               owner_claim text default 'sub')
returns void language plpgsql as $$
begin
    if (owner_column is not null) = public then
        raise exception 'rowcast.enable(%): give exactly one of owner_column => ''<column>'' or public => true', tbl;
    end if;
    if owner_column is not null and not exists (
        select 1 from pg_attribute
        where attrelid = tbl and attname = owner_column and attnum > 0 and not attisdropped) then
        raise exception 'rowcast.enable(%): no column named "%"', tbl, owner_column;
    end if;
    if coalesce(owner_claim, '') = '' then
        raise exception 'rowcast.enable(%): owner_claim must name a claim, e.g. ''sub'' or ''app_metadata.org_id''', tbl;
    end if;
    if not exists (select 1 from pg_index where indrelid = tbl and indisprimary) then
        raise exception 'rowcast.enable(%): the table needs a primary key', tbl;
    end if;
    insert into rowcast.tables (relid, owner_column, is_public, owner_claim)
    values (tbl, owner_column, public, owner_claim)
    on conflict (relid) do update
        set owner_column = excluded.owner_column, is_public = excluded.is_public,
            owner_claim = excluded.owner_claim, enabled_at = now();
    execute format('drop trigger if exists rowcast_capture on %s', tbl);
    execute format('create trigger rowcast_capture after insert or update or delete on %s '
                   'for each row execute function rowcast.capture(%L, %L)', tbl, coalesce(owner_column, ''),
                   (select case relreplident when 'f' then 'full' else '' end from pg_class where oid = tbl));
    -- Gateways reload their table list on this channel.
    perform pg_notify('rowcast_tables', tbl::text);
end $$;

-- 0003: PUBLIC executes nothing in this schema.
revoke all on function rowcast.enable(regclass, text, boolean, text) from public;
