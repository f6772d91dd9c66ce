-- A change to the catalogue of enabled tables (rowcast.enable, rowcast.disable)
-- leaves a marker in the change log, in the same transaction. The gateway
-- reloads its table cache when its reader meets the marker, so every change
-- after it in the log is delivered under the new settings (owner column,
-- public, replica identity). The rowcast_tables notification alone did not
-- promise that: it travels on another connection than the reads, and a
-- change committed just after a re-enable could be read first and delivered
-- under the old visibility rule.
create function rowcast.tables_changed() returns trigger language plpgsql as $$
begin
    insert into rowcast.changes (schema_name, table_name, op) values ('rowcast', 'tables', 'UPDATE');
    return null;
end $$;

create trigger rowcast_tables_changed after insert or update or delete on rowcast.tables
    for each statement execute function rowcast.tables_changed();

-- Only the schema's owner (the gateway) touches these (see 0003).
revoke all on function rowcast.tables_changed() from public;
