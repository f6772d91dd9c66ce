-- rowcast.read_pass plans its query afresh on every call. PL/pgSQL keeps a
-- generic plan for the session once it judges it good enough, and a plan
-- judged on a near-empty log (a new database, the gateway just started)
-- read the gap ids with a sequential scan: every pass with a gap then read
-- the whole log, however long it grew (seen as 7-12 full scans a second of
-- a 300,000-row log under load). A custom plan sees the actual ids and
-- bounds; planning costs about 0.1 ms a pass, and with real statistics
-- PL/pgSQL was choosing custom plans anyway.
alter function rowcast.read_pass(bigint, bigint[], bigint) set plan_cache_mode = force_custom_plan;
