-- A claim reads the queue in claim order from jobs_claimable; it never
-- sorts the type's pending jobs to find the first few.
--
-- Postgres sorted them when its statistics said the type had few pending
-- jobs and the pending-job indexes were large: statistics taken in a quiet
-- moment (autovacuum's ANALYZE) in a queue that once held a big backlog,
-- whose partial indexes keep their size. A burst that arrives then was
-- claimed by a sequential scan and a sort of every pending job of the type,
-- O(backlog) a claim and O(backlog²) a drain: 4-7 ms a claim of 10 jobs out
-- of 5,000 where the ordered index reads 10 entries (seen with auto_explain
-- as the benchmark's drain fell from 4,640 to 941-2,177 jobs/s on a reused
-- database). Sorting stays possible where nothing else can do (the limited
-- claim ranks 64 candidates per user), at a cost the planner avoids
-- whenever an index gives the order.
alter function rowcast.claim_batch(text, text, double precision, int) set enable_sort = off;
alter function rowcast.claim(text, text, double precision) set enable_sort = off;
