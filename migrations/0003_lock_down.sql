-- Lock the rowcast schema away from app roles.
--
-- Postgres lets PUBLIC execute every new function, and rowcast.capture() is
-- SECURITY DEFINER. PUBLIC never had usage on this schema (Postgres grants
-- none on a new schema), but any role given usage on it, which is how an app
-- role reached rowcast.enqueue() from SQL until now, could attach capture()
-- to a table of its own and write forged rows into the change log (a
-- "change" to any table name, owned by any user), which the gateway then
-- fans out as real. The log also holds every captured row, whoever owns it.
-- So PUBLIC gets nothing in this schema: no usage, no table or sequence
-- rights, no execute, stated here even where Postgres's defaults already
-- agree, so a database where someone opened the schema is closed too. The
-- gateway and runner connect as the schema's owner and keep every right;
-- triggers already attached keep firing for every writer (a trigger's
-- function is checked when the trigger is created, not each time it fires),
-- so app roles' writes are still captured.
--
-- Objects added later: Postgres gives PUBLIC no rights on new tables and
-- sequences, but EXECUTE on every new function by a default that
-- `alter default privileges in schema` cannot take back (per-schema defaults
-- only add to the global ones), and the global form would change the
-- migrating role's functions in every schema, not just ours. So a later
-- migration that adds a function to this schema revokes it from PUBLIC
-- itself; tests/it/lockdown.rs fails while anything here is open to PUBLIC.
--
-- Apps that enqueue jobs from SQL get one narrow door: the NOLOGIN role
-- rowcast_enqueue may use the schema and call rowcast.enqueue() and nothing
-- else (`grant rowcast_enqueue to app_role`). enqueue() therefore runs as its
-- owner (SECURITY DEFINER): the caller needs no rights on the job tables
-- (the ones enqueue's own SQL uses would let it read every user's jobs). Its
-- fixed search_path means no caller can redirect a name it uses; enqueue runs
-- once per job, so the cost 0001 measured for this clause on the capture
-- trigger does not matter here.
-- A member may enqueue for any user_id, as the schema owner may: the app is
-- trusted to say on whose behalf it enqueues.

revoke all on schema rowcast from public;
revoke all on all tables in schema rowcast from public;
revoke all on all sequences in schema rowcast from public;
revoke all on all functions in schema rowcast from public;

alter function rowcast.enqueue(text, jsonb, text, text, timestamptz, int, int, uuid)
    security definer set search_path = pg_catalog, pg_temp;

-- Roles are cluster-wide and creating one needs CREATEROLE: a migrating user
-- without it gets a notice instead of a failed migration, and can create the
-- role later and run the two grants by hand.
do $$
begin
    if not exists (select 1 from pg_catalog.pg_roles where rolname = 'rowcast_enqueue') then
        if not (select rolcreaterole or rolsuper from pg_catalog.pg_roles where rolname = current_user) then
            raise notice 'rowcast: role rowcast_enqueue not created (needs CREATEROLE); SQL enqueue is for the schema owner only';
            return;
        end if;
        create role rowcast_enqueue nologin;
    end if;
    grant usage on schema rowcast to rowcast_enqueue;
    grant execute on function rowcast.enqueue(text, jsonb, text, text, timestamptz, int, int, uuid) to rowcast_enqueue;
end $$;
