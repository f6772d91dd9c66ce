-- rowcast.read_pass keeps one plan per session instead of planning each call.
--
-- 0013 had it plan every call afresh, because the generic plan PL/pgSQL
-- settled on for a nearly empty log read the gap ids with a sequential scan
-- of the whole log. With sequential scans off for this function, the
-- generic plan reads both parts through the primary key (a bounded range
-- scan stopping at the batch, and one probe per gap id, merged in id order),
-- however the log's size or statistics change; the function is the reader's
-- and reads nothing a key cannot reach. Planning was about 0.2 of the 0.77
-- ms a call took while draining jobs; the reader calls it every 1-3 ms under
-- load (pg_stat_statements: 0.77 ms a call before, 0.55 after). JIT is off
-- for it, as for the claims (0024): its few-row reads never pay for
-- compiling.
alter function rowcast.read_pass(bigint, bigint[], bigint)
    set plan_cache_mode = force_generic_plan
    set enable_seqscan = off
    set jit = off;
