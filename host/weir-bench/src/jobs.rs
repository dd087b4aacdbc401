//! `weir bench jobs`: durable job submits (`JobStore::insert`) per second and their latency on
//! SQLite and PostgreSQL, against raw `INSERT`s of the same rows (the store's own
//! [`INSERT_JOB`] on the store's own pool) in the same run. The two paths alternate in rounds
//! on the same database so that drift (WAL checkpoints, autovacuum, a growing table) falls on
//! both alike.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use sqlx::{Connection as _, Executor as _};
use weir_jobs::store::{now_ms, Inserted, Millis, INSERT_JOB};
use weir_jobs::{JobState, JobStore, NewJob, PostgresJobs, SqliteJobs};

/// Submits per second on SQLite to reach.
const SQLITE_TARGET_PER_S: f64 = 2_000.0;
/// Submits per second on PostgreSQL to reach.
const POSTGRES_TARGET_PER_S: f64 = 5_000.0;
/// Submit latency p99 to stay under, both backends.
const P99_TARGET_MS: f64 = 10.0;
/// Measured rounds per path; the order of the two paths alternates from round to round.
const ROUNDS: usize = 4;
/// Tenants the jobs are spread over.
const TENANTS: usize = 16;

/// Settings of `weir bench jobs`.
#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    /// Measured submits per backend (and as many raw inserts).
    #[arg(long, default_value_t = 5_000)]
    count: usize,
    /// Untimed submits (and as many raw inserts) before measuring.
    #[arg(long, default_value_t = 300)]
    warmup: usize,
    /// Concurrent submitters on SQLite (the store's pool holds 4 connections and SQLite
    /// serialises writers).
    #[arg(long, default_value_t = 4)]
    sqlite_concurrency: usize,
    /// Concurrent submitters on PostgreSQL (also the size of the store's pool).
    #[arg(long, default_value_t = 32)]
    postgres_concurrency: usize,
    /// PostgreSQL admin URL: a fresh `weir_bench_<random>` database is created through it,
    /// used and dropped. Unreachable: the PostgreSQL part is skipped.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres: String,
    /// Skip PostgreSQL.
    #[arg(long)]
    no_postgres: bool,
    /// Skip SQLite.
    #[arg(long)]
    no_sqlite: bool,
}

/// Run the benchmark and print its table.
pub fn run(args: JobsArgs) -> anyhow::Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_async(args))
}

async fn run_async(args: JobsArgs) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "jobs benchmark: durable submits (JobStore::insert) against raw INSERT_JOB of the same rows"
    );
    println!(
        "  {} measured per path per backend after {} warm-up, {ROUNDS} alternating rounds, \
         {TENANTS} tenants, ~half with an Idempotency-Key; {cores} CPU cores",
        args.count, args.warmup
    );
    println!(
        "{:<9} {:<17} {:>5} {:>11} {:>8} {:>8}   target",
        "backend", "path", "tasks", "submits/s", "p50 ms", "p99 ms"
    );
    if args.no_sqlite {
        println!("sqlite    skipped (--no-sqlite)");
    } else {
        let dir = tempfile::tempdir().context("creating a temporary directory for SQLite")?;
        let store = SqliteJobs::open(&dir.path().join("jobs.db"))
            .await
            .context("opening the SQLite job store")?;
        let backend = Arc::new(Backend::Sqlite(store));
        let result = bench_backend(&backend, &args, args.sqlite_concurrency.max(1)).await;
        if let Backend::Sqlite(s) = &*backend {
            s.pool().close().await;
        }
        report("sqlite", &result?, SQLITE_TARGET_PER_S);
    }
    if args.no_postgres {
        println!("postgres  skipped (--no-postgres)");
    } else {
        postgres(&args).await?;
    }
    Ok(())
}

/// The PostgreSQL part: a fresh database, the measurement, the database dropped.
async fn postgres(args: &JobsArgs) -> anyhow::Result<()> {
    let shown = redacted(&args.postgres);
    let mut admin = match tokio::time::timeout(
        Duration::from_secs(5),
        sqlx::PgConnection::connect(&args.postgres),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            println!("postgres  skipped: cannot connect to {shown}: {e}");
            return Ok(());
        }
        Err(_) => {
            println!("postgres  skipped: no answer from {shown} within 5 s");
            return Ok(());
        }
    };
    let name = format!("weir_bench_{:016x}", rand::random::<u64>());
    let mut url = reqwest::Url::parse(&args.postgres)
        .with_context(|| format!("parsing the PostgreSQL URL {shown}"))?;
    url.set_path(&format!("/{name}"));
    if let Err(e) = admin
        .execute(format!("CREATE DATABASE \"{name}\"").as_str())
        .await
    {
        println!("postgres  skipped: cannot create database {name} through {shown}: {e}");
        return Ok(());
    }
    let concurrency = args.postgres_concurrency.max(1);
    let result = async {
        let pool_size = u32::try_from(concurrency).unwrap_or(u32::MAX);
        let store = PostgresJobs::connect(url.as_str(), pool_size)
            .await
            .with_context(|| format!("connecting the job store to database {name}"))?;
        let backend = Arc::new(Backend::Postgres(store));
        let result = bench_backend(&backend, args, concurrency).await;
        if let Backend::Postgres(p) = &*backend {
            p.pool().close().await;
        }
        result
    }
    .await;
    if let Err(e) = admin
        .execute(format!("DROP DATABASE \"{name}\" WITH (FORCE)").as_str())
        .await
    {
        eprintln!("warning: dropping the benchmark database {name} failed: {e}");
    }
    // Best effort: the server ends the session either way.
    let _ = admin.close().await;
    report("postgres", &result?, POSTGRES_TARGET_PER_S);
    Ok(())
}

/// The admin URL with its password hidden.
fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            // Cannot fail: the URL has a password, so it has a host.
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// A store under test, with direct access to its pool for the raw path.
enum Backend {
    Sqlite(SqliteJobs),
    Postgres(PostgresJobs),
}

/// Which path a phase measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// `JobStore::insert`.
    Store,
    /// `INSERT_JOB` alone.
    Raw,
}

/// Bind a job to [`INSERT_JOB`] exactly as the store does and run it on `$pool`.
macro_rules! raw_insert {
    ($pool:expr, $job:expr, $now:expr) => {{
        let job: &NewJob = $job;
        let params = job.params.to_string();
        let (key, hash) = job.idempotency.clone().unzip();
        sqlx::query(INSERT_JOB)
            .bind(&job.id)
            .bind(&job.tenant)
            .bind(&job.model)
            .bind(&params)
            .bind(&job.webhook_url)
            .bind(job.priority)
            .bind(i64::from(job.max_attempts))
            .bind(i64::try_from(job.timeout.as_millis()).unwrap_or(i64::MAX))
            .bind($now)
            .bind(&key)
            .bind(&hash)
            .execute($pool)
            .await
            .map(|_| ())
    }};
}

impl Backend {
    fn store(&self) -> &dyn JobStore {
        match self {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => p,
        }
    }

    async fn submit(&self, path: Path, job: &NewJob, now: Millis) -> anyhow::Result<()> {
        match path {
            Path::Store => match self.store().insert(job.clone(), now).await? {
                Inserted::New(_) => Ok(()),
                Inserted::Existing(j) => bail!("job {} was taken for a replay of {}", job.id, j.id),
            },
            Path::Raw => {
                match self {
                    Backend::Sqlite(s) => raw_insert!(s.pool(), job, now)?,
                    Backend::Postgres(p) => raw_insert!(p.pool(), job, now)?,
                }
                Ok(())
            }
        }
    }
}

/// `n` realistic text-to-image jobs with fresh ids; about half carry an idempotency key.
fn jobs(n: usize) -> Vec<NewJob> {
    let prompts = [
        "a lighthouse at dusk",
        "a red fox in fresh snow, telephoto",
        "isometric city block at night, neon signs",
        "watercolor of a harbour in the rain",
    ];
    (0..n)
        .map(|i| {
            let with_key = rand::random::<bool>();
            NewJob {
                id: format!("job_{:032x}", rand::random::<u128>()),
                tenant: format!("tenant-{:02}", i % TENANTS),
                model: "bench-t2i".into(),
                params: serde_json::json!({
                    "prompt": prompts[i % prompts.len()],
                    "width": 1024,
                    "height": 1024,
                    "steps": 30,
                    "seed": i,
                }),
                webhook_url: (i % 3 == 0).then(|| "https://hooks.example.com/weir/jobs".into()),
                priority: 0,
                max_attempts: 3,
                timeout: Duration::from_secs(300),
                idempotency: with_key.then(|| {
                    (
                        format!("idem-{:032x}", rand::random::<u128>()),
                        format!(
                            "{:032x}{:032x}",
                            rand::random::<u128>(),
                            rand::random::<u128>()
                        ),
                    )
                }),
            }
        })
        .collect()
}

/// What one phase measured.
struct Phase {
    elapsed: Duration,
    latencies: Vec<Duration>,
}

/// Submit every job in `jobs` through `path` from `concurrency` tasks.
async fn phase(
    backend: &Arc<Backend>,
    path: Path,
    jobs: Vec<NewJob>,
    concurrency: usize,
) -> anyhow::Result<Phase> {
    let jobs = Arc::new(jobs);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(jobs.len()).max(1) {
        let (backend, jobs, next) = (Arc::clone(backend), Arc::clone(&jobs), Arc::clone(&next));
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(jobs.len() / concurrency + 1);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                let t = Instant::now();
                backend.submit(path, job, now_ms()).await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(jobs.len());
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done.context("a submitter task panicked")??);
    }
    Ok(Phase {
        elapsed: started.elapsed(),
        latencies,
    })
}

/// Figures of one path.
struct PathFigures {
    concurrency: usize,
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Both paths on one backend.
struct BackendFigures {
    store: PathFigures,
    raw: PathFigures,
}

fn figures(concurrency: usize, elapsed: Duration, mut latencies: Vec<Duration>) -> PathFigures {
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    PathFigures {
        concurrency,
        per_s: latencies.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
    }
}

async fn bench_backend(
    backend: &Arc<Backend>,
    args: &JobsArgs,
    concurrency: usize,
) -> anyhow::Result<BackendFigures> {
    let name = backend.store().backend();
    for path in [Path::Store, Path::Raw] {
        phase(backend, path, jobs(args.warmup), concurrency)
            .await
            .with_context(|| format!("{name}: warm-up ({path:?})"))?;
    }
    let mut totals = [(Duration::ZERO, Vec::new()), (Duration::ZERO, Vec::new())];
    for round in 0..ROUNDS {
        let n = args.count / ROUNDS + usize::from(round < args.count % ROUNDS);
        let order = if round % 2 == 0 {
            [Path::Store, Path::Raw]
        } else {
            [Path::Raw, Path::Store]
        };
        for path in order {
            let p = phase(backend, path, jobs(n), concurrency)
                .await
                .with_context(|| format!("{name}: round {} ({path:?})", round + 1))?;
            let slot = &mut totals[usize::from(path == Path::Raw)];
            slot.0 += p.elapsed;
            slot.1.extend(p.latencies);
        }
    }
    let expected = 2 * (args.warmup + args.count);
    let queued = backend
        .store()
        .counts()
        .await
        .with_context(|| format!("{name}: counting the jobs"))?
        .get(&JobState::Queued)
        .copied()
        .unwrap_or(0);
    if usize::try_from(queued).ok() != Some(expected) {
        bail!("{name}: {queued} queued jobs after the run, expected {expected}");
    }
    let [(store_elapsed, store_lat), (raw_elapsed, raw_lat)] = totals;
    Ok(BackendFigures {
        store: figures(concurrency, store_elapsed, store_lat),
        raw: figures(concurrency, raw_elapsed, raw_lat),
    })
}

fn report(backend: &str, f: &BackendFigures, target_per_s: f64) {
    let mark = |ok: bool| if ok { "ok" } else { "MISSED" };
    let s = &f.store;
    println!(
        "{backend:<9} {:<17} {:>5} {:>11.0} {:>8.2} {:>8.2}   >= {target_per_s:.0}/s {}, p99 <= {P99_TARGET_MS:.0} ms {}",
        "JobStore::insert",
        s.concurrency,
        s.per_s,
        s.p50_ms,
        s.p99_ms,
        mark(s.per_s >= target_per_s),
        mark(s.p99_ms <= P99_TARGET_MS)
    );
    let r = &f.raw;
    println!(
        "{backend:<9} {:<17} {:>5} {:>11.0} {:>8.2} {:>8.2}   (reference)",
        "raw INSERT_JOB", r.concurrency, r.per_s, r.p50_ms, r.p99_ms
    );
    println!(
        "{backend:<9} ratio store/raw: throughput {:.2}, p50 {:.2}x, p99 {:.2}x",
        s.per_s / r.per_s.max(1e-9),
        s.p50_ms / r.p50_ms.max(1e-6),
        s.p99_ms / r.p99_ms.max(1e-6)
    );
}
