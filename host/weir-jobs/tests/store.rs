//! The job store's contract, run against both backends: SQLite in a temporary directory and a
//! fresh PostgreSQL database (`$WEIR_TEST_POSTGRES`, default the local server).

use std::sync::Arc;
use std::time::Duration;

use weir_jobs::store::{
    Cancel, Completion, DeliveryNext, Inserted, JobState, JobStore, Lease, NewDelivery, NewJob,
    PostgresJobs, SqliteJobs, StoreError,
};

const LEASE: Duration = Duration::from_secs(30);

/// A database of its own on the local PostgreSQL server, dropped with the guard.
struct PgDatabase {
    admin: String,
    name: String,
    url: String,
}

impl PgDatabase {
    async fn create() -> PgDatabase {
        let admin = std::env::var("WEIR_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let name = format!("weir_store_{:016x}", rand::random::<u64>());
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
            .await
            .expect("PostgreSQL at $WEIR_TEST_POSTGRES (default 127.0.0.1:5432) must be running");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create database");
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        PgDatabase { admin, name, url }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // A fresh runtime on a thread: Drop may run inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut c) = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await;
                }
            });
        })
        .join();
    }
}

fn job(id: &str, tenant: &str, priority: i64) -> NewJob {
    NewJob {
        id: id.to_owned(),
        tenant: tenant.to_owned(),
        model: "test-t2i".to_owned(),
        params: serde_json::json!({"prompt": id}),
        webhook_url: None,
        priority,
        max_attempts: 3,
        timeout: Duration::from_secs(60),
        idempotency: None,
    }
}

fn done(n: u64) -> Completion {
    Completion {
        result: serde_json::json!({"url": format!("results/{n}.png")}),
        charge: n,
        gpu_ms: 10,
        output_units: 4096,
        orchestrator: "http://o1".to_owned(),
        expires_at: 1_000,
    }
}

fn hook(id: &str, event: &str) -> Option<NewDelivery> {
    Some(NewDelivery {
        id: id.to_owned(),
        event: event.to_owned(),
        url: "http://hooks.example/x".to_owned(),
        payload: format!("{{\"type\":\"{event}\"}}"),
    })
}

async fn contract(store: Arc<dyn JobStore>) {
    let now = 1_000_000;

    // Idempotency: the same key and hash give the original job; another hash is a conflict.
    let mut a = job("job-a", "t1", 0);
    a.idempotency = Some(("key-1".to_owned(), "hash-1".to_owned()));
    let Inserted::New(first) = store.insert(a.clone(), now).await.expect("insert") else {
        panic!("a new key must queue a job");
    };
    assert_eq!(first.state().expect("state"), JobState::Queued);
    let mut replay = a.clone();
    replay.id = "job-a2".to_owned();
    match store.insert(replay.clone(), now).await.expect("replay") {
        Inserted::Existing(j) => assert_eq!(j.id, "job-a"),
        Inserted::New(_) => panic!("a replayed key must not queue a second job"),
    }
    replay.idempotency = Some(("key-1".to_owned(), "hash-2".to_owned()));
    match store.insert(replay, now).await {
        Err(StoreError::IdempotencyConflict { job_id, .. }) => assert_eq!(job_id, "job-a"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // The same key is another tenant's own.
    let mut other_tenant = a.clone();
    other_tenant.id = "job-a3".to_owned();
    other_tenant.tenant = "t2".to_owned();
    assert!(matches!(
        store.insert(other_tenant, now).await.expect("insert"),
        Inserted::New(_)
    ));

    // Priority first, then age; positions follow.
    store.insert(job("job-b", "t1", 0), now).await.expect("b");
    store.insert(job("job-c", "t1", 5), now).await.expect("c");
    let b = store
        .get(Some("t1"), "job-b")
        .await
        .expect("get")
        .expect("b");
    assert_eq!(store.queue_position(&b).await.expect("pos"), 3);
    assert!(store.get(Some("t2"), "job-b").await.expect("get").is_none());

    let claimed = store
        .claim("w1", now, LEASE, 10)
        .await
        .expect("claim")
        .expect("a job");
    assert_eq!(claimed.id, "job-c", "the highest priority runs first");
    assert_eq!(claimed.attempts, 1);
    assert_eq!(claimed.lease_owner.as_deref(), Some("w1"));

    // A tenant at its limit is skipped.
    let next = store
        .claim("w2", now, LEASE, 1)
        .await
        .expect("claim")
        .expect("another tenant's job");
    assert_eq!(next.tenant, "t2");
    assert!(store
        .claim("w2", now, LEASE, 1)
        .await
        .expect("claim")
        .is_none());

    // Heartbeats renew; a cancel request shows in the next heartbeat.
    assert_eq!(
        store
            .heartbeat("job-c", "w1", now + 1, LEASE, 40)
            .await
            .expect("hb"),
        Lease::Held { cancel: false }
    );
    assert_eq!(
        store
            .heartbeat("job-c", "w9", now + 1, LEASE, 40)
            .await
            .expect("hb"),
        Lease::Lost
    );
    match store
        .cancel("t1", "job-c", now + 2, None)
        .await
        .expect("cancel")
    {
        Cancel::Requested(j) => assert_eq!(j.progress, 40),
        other => panic!("a running job's cancel is a request, got {other:?}"),
    }
    assert_eq!(
        store
            .heartbeat("job-c", "w1", now + 3, LEASE, 50)
            .await
            .expect("hb"),
        Lease::Held { cancel: true }
    );
    assert!(store
        .finish_canceled("job-c", "w1", now + 4, hook("d-c", "job.canceled"))
        .await
        .expect("finish"));
    // Nothing more happens to a canceled job.
    assert!(!store
        .complete("job-c", "w1", now + 5, done(1), None)
        .await
        .expect("complete"));
    assert!(matches!(
        store
            .cancel("t1", "job-c", now + 5, None)
            .await
            .expect("cancel"),
        Cancel::AlreadyFinal(_)
    ));
    assert!(matches!(
        store
            .cancel("t2", "job-b", now + 5, None)
            .await
            .expect("cancel"),
        Cancel::NotFound
    ));

    // A queued job cancels at once, with its webhook in the outbox.
    match store
        .cancel("t1", "job-b", now + 6, hook("d-b", "job.canceled"))
        .await
        .expect("cancel")
    {
        Cancel::Canceled(j) => assert_eq!(j.state().expect("state"), JobState::Canceled),
        other => panic!("expected canceled, got {other:?}"),
    }

    // A lost lease: the job returns to the queue and the old worker cannot complete it.
    let a = store
        .claim("w1", now + 10, Duration::from_millis(5), 10)
        .await
        .expect("claim")
        .expect("job-a");
    assert_eq!(a.id, "job-a");
    let back = store.reclaim_expired(now + 100).await.expect("reclaim");
    assert!(back.contains(&"job-a".to_owned()));
    let again = store
        .claim("w2", now + 100, LEASE, 10)
        .await
        .expect("claim")
        .expect("job-a again");
    assert_eq!((again.id.as_str(), again.attempts), ("job-a", 2));
    assert!(!store
        .complete("job-a", "w1", now + 101, done(5), None)
        .await
        .expect("stale complete"));
    assert!(store
        .complete(
            "job-a",
            "w2",
            now + 102,
            done(7),
            hook("d-a", "job.completed")
        )
        .await
        .expect("complete"));
    assert!(!store
        .complete(
            "job-a",
            "w2",
            now + 103,
            done(7),
            hook("d-a2", "job.completed")
        )
        .await
        .expect("second complete"));
    let a = store.get(None, "job-a").await.expect("get").expect("a");
    assert_eq!(a.state().expect("state"), JobState::Completed);
    assert_eq!(a.charge, Some(7));
    assert_eq!(
        a.result().expect("result").expect("some")["url"],
        "results/7.png"
    );

    // Failures: retried with a time, then final.
    store.insert(job("job-d", "t3", 0), now).await.expect("d");
    let d = store
        .claim("w1", now + 200, LEASE, 10)
        .await
        .expect("claim")
        .expect("d");
    assert!(store
        .fail(
            &d.id,
            "w1",
            now + 201,
            "orchestrator busy",
            Some(now + 5_000),
            None
        )
        .await
        .expect("fail"));
    assert!(
        store
            .claim("w1", now + 300, LEASE, 10)
            .await
            .expect("claim")
            .is_none(),
        "a job waiting out its backoff is not claimed"
    );
    let d = store
        .claim("w1", now + 5_000, LEASE, 10)
        .await
        .expect("claim")
        .expect("d again");
    assert_eq!(d.attempts, 2);
    assert!(store
        .fail(
            &d.id,
            "w1",
            now + 5_001,
            "bad input",
            None,
            hook("d-d", "job.failed")
        )
        .await
        .expect("fail"));
    let d = store.get(None, "job-d").await.expect("get").expect("d");
    assert_eq!(d.state().expect("state"), JobState::Failed);
    assert_eq!(d.error.as_deref(), Some("bad input"));

    // Listing: newest first, by state, with a cursor.
    let all = store.list("t1", None, None, 10).await.expect("list");
    let ids: Vec<_> = all.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["job-c", "job-b", "job-a"]);
    let page = store.list("t1", None, None, 2).await.expect("page");
    let rest = store
        .list("t1", None, Some(page[1].seq), 2)
        .await
        .expect("rest");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].id, "job-a");
    let canceled = store
        .list("t1", Some(JobState::Canceled), None, 10)
        .await
        .expect("list");
    assert_eq!(canceled.len(), 2);

    let counts = store.counts().await.expect("counts");
    assert_eq!(counts[&JobState::Completed], 1);
    assert_eq!(counts[&JobState::Canceled], 2);
    assert_eq!(counts[&JobState::Failed], 1);
    assert_eq!(counts[&JobState::Running], 1);

    // Webhook outbox: claimed once per lease, attempts recorded, final states kept.
    let due = store
        .due_deliveries(now + 10_000, LEASE, 10)
        .await
        .expect("due");
    let mut ids: Vec<_> = due.iter().map(|d| d.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["d-a", "d-b", "d-c", "d-d"]);
    assert!(
        store
            .due_deliveries(now + 10_000, LEASE, 10)
            .await
            .expect("due")
            .is_empty(),
        "leased deliveries are not handed out twice"
    );
    store
        .record_attempt(
            "d-a",
            1,
            now + 10_001,
            Some(500),
            Some("boom"),
            3,
            DeliveryNext::RetryAt(now + 20_000),
        )
        .await
        .expect("record");
    store
        .record_attempt(
            "d-a",
            2,
            now + 20_001,
            Some(204),
            None,
            2,
            DeliveryNext::Delivered,
        )
        .await
        .expect("record");
    let views = store.deliveries("job-a").await.expect("views");
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].state, "delivered");
    assert_eq!(views[0].attempts.len(), 2);
    assert_eq!(views[0].attempts[0].status, Some(500));

    // Result TTL.
    let expired = store.expired_results(2_000, 10).await.expect("expired");
    assert_eq!(expired.len(), 1);
    store.clear_result("job-a").await.expect("clear");
    assert!(store
        .expired_results(2_000, 10)
        .await
        .expect("expired")
        .is_empty());
}

/// Many workers racing on many jobs: each job is claimed and completed exactly once.
async fn race(store: Arc<dyn JobStore>) {
    let now = 5_000_000;
    for i in 0..60 {
        store
            .insert(job(&format!("race-{i:03}"), &format!("t{}", i % 3), 0), now)
            .await
            .expect("insert");
    }
    let mut tasks = Vec::new();
    for w in 0..6 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            let mut mine = Vec::new();
            while let Some(j) = store.claim(&worker, now, LEASE, 100).await.expect("claim") {
                assert!(store
                    .complete(&j.id, &worker, now + 1, done(1), None)
                    .await
                    .expect("complete"));
                mine.push(j.id);
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("worker"));
    }
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "a job was claimed twice");
    assert_eq!(all.len(), 60, "every job ran");
}

#[tokio::test]
async fn sqlite_store_keeps_the_contract() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Arc::new(
        SqliteJobs::open(&dir.path().join("jobs.db"))
            .await
            .expect("open"),
    );
    contract(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_hands_each_job_to_one_worker() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Arc::new(
        SqliteJobs::open(&dir.path().join("jobs.db"))
            .await
            .expect("open"),
    );
    race(store).await;
}

#[tokio::test]
async fn postgres_store_keeps_the_contract() {
    let db = PgDatabase::create().await;
    let store = Arc::new(PostgresJobs::connect(&db.url, 4).await.expect("connect"));
    contract(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_hands_each_job_to_one_worker() {
    let db = PgDatabase::create().await;
    let store = Arc::new(PostgresJobs::connect(&db.url, 8).await.expect("connect"));
    race(store).await;
}

#[tokio::test]
async fn a_job_survives_reopening_the_sqlite_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("jobs.db");
    {
        let store = SqliteJobs::open(&path).await.expect("open");
        store.insert(job("kept", "t1", 0), 1).await.expect("insert");
    }
    let store = SqliteJobs::open(&path).await.expect("reopen");
    let kept = store.get(None, "kept").await.expect("get").expect("kept");
    assert_eq!(kept.state().expect("state"), JobState::Queued);
}
