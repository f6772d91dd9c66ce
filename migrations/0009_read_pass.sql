-- One read pass of the change log in one statement, where it took two.
--
-- A pass must read the sequence before taking the snapshot it reads rows
-- under: every id up to that value was handed out to a transaction that is
-- then finished (visible) or running (listed in the snapshot). The reader
-- did that as two statements, so each pass was two transactions. Inside a
-- VOLATILE function each query takes a fresh snapshot (read committed), so
-- the sequence is read first and the rows second, in one call and one
-- transaction, with the same order.
--
-- The query is the listener's READ (src/changes/listener.rs) with the
-- sequence's value for its upper bound; tests/it/capture.rs checks that both
-- return the same rows. A pass that needs a fence (a committed write between
-- the two reads) still runs the statements one by one.
create function rowcast.read_pass(hw bigint, gaps bigint[], batch bigint,
                                  out snapshot text, out rows json, out upper bigint)
language plpgsql volatile as $$
begin
    select case when is_called then last_value else 0 end into upper from rowcast.changes_id_seq;
    select pg_current_snapshot()::text,
           coalesce((select json_agg(c order by c.id) from (
               select * from (
                   (select id, changed_at, schema_name, table_name, op, owner, record, old_record
                    from rowcast.changes where id > hw and id <= upper order by id limit batch)
                   union all
                   (select id, changed_at, schema_name, table_name, op, owner, record, old_record
                    from rowcast.changes where id = any(gaps) and not (id > hw and id <= upper))) pass
               order by id
               limit batch) c), '[]'::json)
      into snapshot, rows;
end $$;

-- Only the schema's owner (the gateway) calls it (see 0003).
revoke all on function rowcast.read_pass(bigint, bigint[], bigint) from public;
