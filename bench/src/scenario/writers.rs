//! `writer-cost`: what change capture costs the application's writers.
//!
//! Single-row UPDATEs by primary key on a 10,000-row table, from 1, 8 and
//! 32 connections, for `--secs` each, on a cluster with fsync on (commits
//! wait for the disk, as in production). Three ways, interleaved in every
//! repeat so drift in the machine hits them alike: no trigger (capture
//! off); the naive way, an AFTER trigger that NOTIFYs the row as JSON on
//! every commit; rowcast's capture trigger with the gateway reading the log.
//! Then the alternatives, each into a log of the bench's own that nobody
//! reads, to tell apart what the cost is made of: the row trigger rowcast
//! used until migration 0023 (the same insert and doorbell check against a
//! busy listener's row, once per row; no reader competing for the cores),
//! a lean row (table, op and key, no JSON),
//! the full row into an unlogged table (no WAL; lost on a crash), and a
//! statement-level trigger with a transition table.
//! Reported per way and writer count: commits/s (median and spread over
//! `--repeats`) and the ratio to capture off, taken within each repeat.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rowcast::pg_local::Durability;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::time::Instant;

use crate::plot::{Chart, Series};
use crate::report::{percentile, Table};
use crate::scenario::{record, Env};
use crate::stack::Stack;

/// Parameters of `writer-cost`.
#[derive(clap::Parser, Debug, Clone)]
pub struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Repeats of the whole set.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Writer connection counts.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub writers: Vec<usize>,
}

/// rowcast's capture must keep this share of capture-off throughput at 8+ writers.
const TARGET_SHARE: f64 = 0.8;

const SETUP: &str = "
create table public.bench (id int primary key, user_id text not null, n int not null default 0);
insert into public.bench select i, 'u' || (i % 100), 0 from generate_series(1, 10000) i;
create function public.bench_notify() returns trigger language plpgsql as $$
begin perform pg_notify('bench', row_to_json(new)::text); return null; end $$;
create table public.bench_log (
    id bigint generated always as identity (cache 1) primary key,
    changed_at timestamptz not null default clock_timestamp(),
    schema_name text not null, table_name text not null, op text not null,
    owner text, record jsonb, old_record jsonb);
create unlogged table public.bench_log_unlogged (
    id bigint generated always as identity (cache 1) primary key,
    changed_at timestamptz not null default clock_timestamp(),
    schema_name text not null, table_name text not null, op text not null,
    owner text, record jsonb, old_record jsonb);
create table public.bench_log_lean (
    id bigint generated always as identity (cache 1) primary key,
    table_oid oid not null, op \"char\" not null, key text not null);
create table public.bench_listeners (id uuid primary key, idle boolean not null, seen_at timestamptz not null);
insert into public.bench_listeners values (gen_random_uuid(), false, now());
create function public.bench_copy() returns trigger language plpgsql as $$
declare new_row jsonb := to_jsonb(new);
begin
    insert into public.bench_log (schema_name, table_name, op, owner, record)
    values (TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP, new_row->>'user_id', new_row);
    if exists (select 1 from public.bench_listeners where idle and seen_at > now() - '30 seconds'::interval) then
        perform pg_notify('bench', '');
    end if;
    return null;
end $$;
create function public.bench_copy_unlogged() returns trigger language plpgsql as $$
declare new_row jsonb := to_jsonb(new);
begin
    insert into public.bench_log_unlogged (schema_name, table_name, op, owner, record)
    values (TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP, new_row->>'user_id', new_row);
    return null;
end $$;
create function public.bench_lean() returns trigger language plpgsql as $$
begin
    insert into public.bench_log_lean (table_oid, op, key) values (TG_RELID, 'U', new.id::text);
    return null;
end $$;
create function public.bench_statement() returns trigger language plpgsql as $$
begin
    insert into public.bench_log (schema_name, table_name, op, owner, record)
    select TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP, n.user_id, to_jsonb(n) from new_rows n;
    return null;
end $$;";

/// The ways a table can be watched, or its changes logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Way {
    Off,
    Notify,
    Rowcast,
    InsertOnly,
    Lean,
    Unlogged,
    Statement,
}

impl Way {
    const ALL: [Way; 7] = [Way::Off, Way::Notify, Way::Rowcast, Way::InsertOnly, Way::Lean, Way::Unlogged, Way::Statement];
    /// The ways compared with capture off.
    const WATCHED: [Way; 6] = [Way::Notify, Way::Rowcast, Way::InsertOnly, Way::Lean, Way::Unlogged, Way::Statement];

    /// The way's name in figure names.
    fn key(self) -> &'static str {
        match self {
            Way::Off => "off",
            Way::Notify => "notify",
            Way::Rowcast => "rowcast",
            Way::InsertOnly => "insert_only",
            Way::Lean => "lean_row",
            Way::Unlogged => "unlogged",
            Way::Statement => "statement_trigger",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Way::Off => "capture off (no trigger)",
            Way::Notify => "NOTIFY of the row per commit (naive)",
            Way::Rowcast => "rowcast capture, gateway reading",
            Way::InsertOnly => "row trigger (rowcast's until 0023), no reader",
            Way::Lean => "lean log row (table, op, key), no reader",
            Way::Unlogged => "full row into an unlogged log (lost on crash), no reader",
            Way::Statement => "statement trigger, transition table, no reader",
        }
    }

    /// Switches the table to this way.
    async fn apply(self, pool: &PgPool) -> anyhow::Result<()> {
        sqlx::raw_sql(
            "drop trigger if exists alt on public.bench; select rowcast.disable('public.bench');
             truncate public.bench_log, public.bench_log_unlogged, public.bench_log_lean",
        )
        .execute(pool)
        .await?;
        sqlx::query("delete from rowcast.changes").execute(pool).await?;
        let trigger = match self {
            Way::Off => return Ok(()),
            Way::Rowcast => {
                sqlx::raw_sql("select rowcast.enable('public.bench', owner_column => 'user_id')").execute(pool).await?;
                return Ok(());
            }
            Way::Notify => "for each row execute function public.bench_notify()",
            Way::InsertOnly => "for each row execute function public.bench_copy()",
            Way::Lean => "for each row execute function public.bench_lean()",
            Way::Unlogged => "for each row execute function public.bench_copy_unlogged()",
            Way::Statement => "referencing new table as new_rows for each statement execute function public.bench_statement()",
        };
        sqlx::raw_sql(&format!("create trigger alt after update on public.bench {trigger}")).execute(pool).await?;
        Ok(())
    }
}

/// Runs the scenario and prints its table.
pub async fn run(env: &Env, args: &Args) -> anyhow::Result<()> {
    let stack = Stack::start_durable(env, SETUP, &["--no-runner".to_owned()], Durability::Safe).await?;
    let most = args.writers.iter().copied().max().unwrap_or(1) as u32;
    let pool = PgPoolOptions::new().max_connections(most + 2).connect(&stack.database_url()).await?;
    let params = format!(
        "single-row UPDATE by primary key of public.bench (10,000 rows), writers {:?}, {} s each, {} repeats, ways interleaved",
        args.writers, args.secs, args.repeats
    );
    let mut rec =
        record("writer-cost", "writer-cost: commits/s with capture off, naive NOTIFY, rowcast capture and alternatives", &stack, params);
    let mut runs: BTreeMap<(Way, usize), Vec<f64>> = BTreeMap::new();
    let bar = crate::progress::bar((args.repeats * Way::ALL.len() * args.writers.len()) as u64, "writer runs");
    for _ in 0..args.repeats {
        for way in Way::ALL {
            way.apply(&pool).await?;
            for &w in &args.writers {
                runs.entry((way, w)).or_default().push(commits_per_sec(&pool, w, args.secs).await?);
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    Way::Off.apply(&pool).await?;
    rec.table("commits per second", &table(&runs, args));
    let mut c = Chart::new("Writer throughput, single-row UPDATEs, fsync on", "writer connections (log scale)", "commits/s (median)");
    c.x_log = true;
    for way in Way::ALL {
        let points = args.writers.iter().map(|&w| (w as f64, percentile(&runs[&(way, w)], 0.5))).collect();
        c.series.push(Series::new(way.label(), points));
    }
    rec.chart(c);
    for &w in &args.writers {
        for way in Way::WATCHED {
            let (lo, mid, _) = ratios(&runs, way, w);
            rec.figure(&format!("{}_share_{w}_writers_median", way.key()), mid);
            rec.figure(&format!("{}_share_{w}_writers_min", way.key()), lo);
        }
    }
    rec.write(&env.out)?;
    pool.close().await;
    stack.stop().await
}

/// Per-repeat ratios of `way` to capture off at `w` writers: (min, median, max).
fn ratios(runs: &BTreeMap<(Way, usize), Vec<f64>>, way: Way, w: usize) -> (f64, f64, f64) {
    let r: Vec<f64> = runs[&(way, w)].iter().zip(&runs[&(Way::Off, w)]).map(|(a, b)| a / b).collect();
    (percentile(&r, 0.0), percentile(&r, 0.5), percentile(&r, 1.0))
}

fn table(runs: &BTreeMap<(Way, usize), Vec<f64>>, args: &Args) -> Table {
    let mut t = Table::new(&["way", "writers", "commits/s median", "min - max", "share of capture off", "target"]);
    for way in Way::ALL {
        for &w in &args.writers {
            let v = &runs[&(way, w)];
            let (lo, mid, hi) = ratios(runs, way, w);
            let share = if way == Way::Off { "-".into() } else { format!("{:.0} % ({:.0}-{:.0} %)", mid * 100.0, lo * 100.0, hi * 100.0) };
            let target = if way == Way::Rowcast && w >= 8 {
                format!(">= {:.0} %: {}", TARGET_SHARE * 100.0, if mid >= TARGET_SHARE { "met" } else { "NOT met" })
            } else {
                String::new()
            };
            t.row([
                way.label().into(),
                w.to_string(),
                format!("{:.0}", percentile(v, 0.5)),
                format!("{:.0} - {:.0}", percentile(v, 0.0), percentile(v, 1.0)),
                share,
                target,
            ]);
        }
    }
    t
}

/// Single-row UPDATEs by primary key from `writers` connections for `secs`: commits per second.
async fn commits_per_sec(pool: &PgPool, writers: usize, secs: f64) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..writers {
        let (pool, done) = (pool.clone(), done.clone());
        tasks.spawn(async move {
            let mut conn = pool.acquire().await?;
            let mut i = c as i64;
            while Instant::now() < deadline {
                i = (i * 7919 + 13) % 10_000 + 1;
                sqlx::query("update public.bench set n = n + 1 where id = $1").bind(i as i32).execute(&mut *conn).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    let started = Instant::now();
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}
