-- A claim's lease rows no longer check their job exists (issue 13). The
-- foreign key ran one lookup of rowcast.jobs per leased job, by trigger,
-- after the claim had just updated and locked that very row: 0.22 of a
-- 0.41 ms claim of ten jobs (auto_explain), and the claim's round trip sets
-- the pace of a drain. Its one use was `on delete cascade`: a lease whose
-- job is deleted is now left behind until it expires, when the rescue
-- (src/jobs/scheduler.rs) deletes it as it deletes every expired lease; it
-- finds no running job of that attempt to hand back, so it changes nothing else.
alter table rowcast.job_leases drop constraint job_leases_job_id_fkey;
