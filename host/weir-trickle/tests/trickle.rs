//! The trickle server and clients over real HTTP on loopback.

use std::time::Duration;

use axum::serve::ListenerExt as _;
use bytes::Bytes;
use reqwest::StatusCode;
use tokio::net::TcpListener;
use weir_trickle::{
    ChannelGrant, ChannelKind, ChannelLimits, Publisher, Subscriber, TrickleConfig, TrickleError,
    TrickleServer, CLOSED_HEADER, LATEST_HEADER, RESET_HEADER, SEQ_HEADER,
};

struct Setup {
    server: TrickleServer,
    base: String,
    http: reqwest::Client,
    registry: prometheus::Registry,
}

async fn start(config: TrickleConfig) -> Setup {
    let registry = prometheus::Registry::new();
    let server = TrickleServer::new(config, &registry).expect("metrics register");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("local addr"));
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let router = server.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Setup {
        server,
        base,
        http: reqwest::Client::new(),
        registry,
    }
}

impl Setup {
    fn channel(&self, name: &str) -> (ChannelGrant, String, String) {
        let grant = self.server.create(name, "video/mp2t").expect("create");
        let publish = grant.publish_url(&self.base);
        let subscribe = grant.subscribe_url(&self.base);
        (grant, publish, subscribe)
    }

    async fn post(&self, url: String, body: &'static [u8]) -> reqwest::Response {
        self.http.post(url).body(body).send().await.expect("POST")
    }

    async fn get(&self, url: String) -> reqwest::Response {
        self.http.get(url).send().await.expect("GET")
    }

    fn metric(&self, name: &str, label: Option<&str>) -> f64 {
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| label.is_none_or(|l| m.get_label().iter().any(|p| p.value() == l)))
            .map(|m| m.get_gauge().get_value() + m.get_counter().get_value())
            .sum()
    }
}

/// Await `f` for at most 5 s.
async fn soon<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("timed out")
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_relay_delivers_bytes_before_the_segment_ends() {
    let s = start(TrickleConfig::default()).await;
    let (_, publish, subscribe) = s.channel("relay");
    let mut publisher = Publisher::new(s.http.clone(), publish);
    let mut subscriber = Subscriber::new(s.http.clone(), subscribe).starting_at(0);

    let mut writer = publisher.begin().await.expect("begin");
    assert_eq!(writer.seq(), 0);
    writer
        .send(Bytes::from_static(b"first chunk"))
        .await
        .expect("send");
    let mut segment = soon(subscriber.next())
        .await
        .expect("next")
        .expect("a segment");
    assert_eq!(segment.seq(), 0);
    // The publisher has not finished: the first chunk is already here.
    let first = soon(segment.chunk()).await.expect("chunk").expect("data");
    assert_eq!(&first[..], b"first chunk");
    writer
        .send(Bytes::from_static(b" second chunk"))
        .await
        .expect("send");
    writer.finish().await.expect("finish");
    let rest = soon(segment.bytes(1024)).await.expect("rest");
    assert_eq!(&rest[..], b" second chunk");
    assert_eq!(
        s.metric("weir_trickle_segments_total", Some("complete")),
        1.0
    );
    assert_eq!(s.metric("weir_trickle_bytes_in_total", None), 24.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_minus_one_long_polls_until_the_next_segment_starts() {
    let s = start(TrickleConfig::default()).await;
    let (_, publish, subscribe) = s.channel("edge");
    let waiting = tokio::spawn({
        let http = s.http.clone();
        async move { http.get(format!("{subscribe}/-1")).send().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "the GET must wait for the publisher"
    );
    let seq = Publisher::new(s.http.clone(), publish)
        .write(Bytes::from_static(b"live"))
        .await
        .expect("write");
    assert_eq!(seq, 0);
    let response = soon(waiting).await.expect("task").expect("GET");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, SEQ_HEADER).as_deref(), Some("0"));
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some("video/mp2t")
    );
    assert_eq!(&response.bytes().await.expect("body")[..], b"live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_minus_two_serves_the_segment_being_written() {
    let s = start(TrickleConfig::default()).await;
    let (_, publish, subscribe) = s.channel("current");
    let mut publisher = Publisher::new(s.http.clone(), publish);
    for body in [&b"zero"[..], b"one"] {
        publisher
            .write(Bytes::from_static(body))
            .await
            .expect("write");
    }
    let response = s.get(format!("{subscribe}/-2")).await;
    assert_eq!(header(&response, SEQ_HEADER).as_deref(), Some("1"));
    assert_eq!(&response.bytes().await.expect("body")[..], b"one");

    // Mid-segment: what is there, then the rest live.
    let mut writer = publisher.begin().await.expect("begin");
    writer
        .send(Bytes::from_static(b"half"))
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut response = s.get(format!("{subscribe}/-2")).await;
    assert_eq!(header(&response, SEQ_HEADER).as_deref(), Some("2"));
    let first = soon(response.chunk()).await.expect("chunk").expect("data");
    assert_eq!(&first[..], b"half");
    writer
        .send(Bytes::from_static(b"+rest"))
        .await
        .expect("send");
    writer.finish().await.expect("finish");
    let rest = soon(response.bytes()).await.expect("rest");
    assert_eq!(&rest[..], b"+rest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_out_of_the_ring_get_470_with_the_latest() {
    let s = start(TrickleConfig {
        ring: 3,
        ..TrickleConfig::default()
    })
    .await;
    let (_, publish, subscribe) = s.channel("ring");
    let mut publisher = Publisher::new(s.http.clone(), publish);
    for _ in 0..6 {
        publisher
            .write(Bytes::from_static(b"x"))
            .await
            .expect("write");
    }
    // The publisher pre-connects seq 6, which takes a place in the ring: once its POST has
    // arrived (3 is evicted then), 4, 5 and 6 remain.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while s.get(format!("{subscribe}/3")).await.status().as_u16() != 470 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pre-connected seq 6 never took a place in the ring"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let oldest_kept = s.get(format!("{subscribe}/4")).await;
    assert_eq!(oldest_kept.status(), StatusCode::OK);
    assert_eq!(&oldest_kept.bytes().await.expect("body")[..], b"x");
    let old = s.get(format!("{subscribe}/0")).await;
    assert_eq!(old.status().as_u16(), 470);
    assert_eq!(header(&old, LATEST_HEADER).as_deref(), Some("6"));
    assert_eq!(header(&old, SEQ_HEADER).as_deref(), Some("0"));
    let kept = s.get(format!("{subscribe}/5")).await;
    assert_eq!(kept.status(), StatusCode::OK);
    let ahead = s.get(format!("{subscribe}/9")).await;
    assert_eq!(ahead.status().as_u16(), 470);
    assert_eq!(header(&ahead, LATEST_HEADER).as_deref(), Some("6"));
    let next = s.get(format!("{subscribe}/next")).await;
    assert_eq!(header(&next, LATEST_HEADER).as_deref(), Some("6"));
    assert_eq!(next.text().await.expect("body"), "6");

    // A subscriber that asks for a lost segment jumps to the live edge.
    let mut subscriber = Subscriber::new(s.http.clone(), subscribe).starting_at(1);
    let mut next = tokio::spawn(async move {
        let segment = subscriber.next().await.expect("next").expect("segment");
        (segment.seq(), segment.bytes(100).await.expect("bytes"))
    });
    // Whenever the subscriber reaches the edge (6, or later on a slow machine), the next
    // segment written there is the one it gets.
    let mut written = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (seq, body) = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the subscriber never got a segment: {written:?}"
        );
        let seq = publisher
            .write(Bytes::from_static(b"edge"))
            .await
            .expect("write");
        written.push(seq);
        if let Ok(got) = tokio::time::timeout(Duration::from_millis(200), &mut next).await {
            break got.expect("task");
        }
    };
    assert_eq!(&body[..], b"edge");
    assert!(seq >= 6 && written.contains(&seq), "{seq} {written:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwriting_a_seq_replaces_it_and_old_readers_finish() {
    let s = start(TrickleConfig::default()).await;
    let (_, publish, subscribe) = s.channel("overwrite");
    let r = s.post(format!("{publish}/0"), b"first version").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, SEQ_HEADER).as_deref(), Some("0"));
    let old_reader = s.get(format!("{subscribe}/0")).await;
    assert_eq!(old_reader.status(), StatusCode::OK);
    let r = s.post(format!("{publish}/0"), b"second version").await;
    assert_eq!(r.status(), StatusCode::OK);
    let new_reader = s.get(format!("{subscribe}/0")).await;
    assert_eq!(
        &new_reader.bytes().await.expect("body")[..],
        b"second version"
    );
    assert_eq!(
        &old_reader.bytes().await.expect("body")[..],
        b"first version"
    );
    // POST -1 writes at the next seq.
    let r = s.post(format!("{publish}/-1"), b"next").await;
    assert_eq!(header(&r, SEQ_HEADER).as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_wakes_waiting_subscribers_with_closed() {
    let s = start(TrickleConfig::default()).await;
    let (_, publish, subscribe) = s.channel("closing");
    let waiting = tokio::spawn({
        let http = s.http.clone();
        let url = format!("{subscribe}/0");
        async move { http.get(url).send().await }
    });
    let mut publisher = Publisher::new(s.http.clone(), publish.clone());
    publisher
        .write(Bytes::from_static(b"one"))
        .await
        .expect("write");
    // The publisher's pre-connected POST for seq 1 is open too.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = s.http.delete(&publish).send().await.expect("DELETE");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.server.channels(), 0);

    let first = soon(waiting).await.expect("task").expect("GET");
    // It was waiting at seq 0, which was written before the DELETE.
    assert_eq!(first.status(), StatusCode::OK);
    let later = s.get(format!("{subscribe}/-1")).await;
    assert_eq!(later.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&later, CLOSED_HEADER).as_deref(), Some("terminated"));
    let next = s.get(format!("{subscribe}/next")).await;
    assert_eq!(header(&next, CLOSED_HEADER).as_deref(), Some("terminated"));
    assert!(matches!(
        publisher.write(Bytes::from_static(b"late")).await,
        Err(TrickleError::Closed)
    ));
    publisher.close().await.expect("closing twice is fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_answers_a_blocked_long_poll() {
    let s = start(TrickleConfig::default()).await;
    let (grant, publish, subscribe) = s.channel("blocked");
    let waiting = tokio::spawn({
        let http = s.http.clone();
        async move { http.get(format!("{subscribe}/-1")).send().await }
    });
    let mut subscriber = Subscriber::new(s.http.clone(), grant.subscribe_url(&s.base));
    let client = tokio::spawn(async move { subscriber.next().await.map(|s| s.is_none()) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished());
    Publisher::new(s.http.clone(), publish)
        .close()
        .await
        .expect("close");
    let r = soon(waiting).await.expect("task").expect("GET");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&r, CLOSED_HEADER).as_deref(), Some("terminated"));
    assert!(
        soon(client).await.expect("task").expect("next"),
        "Ok(None) on close"
    );
    assert!(!s.server.close("blocked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked() {
    let s = start(TrickleConfig::default()).await;
    let (grant, publish, subscribe) = s.channel("auth");
    let forged = format!("{}/ai/trickle/auth.{:032x}", s.base, 12345u128);
    assert_eq!(
        s.get(format!("{forged}/-2")).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.post(format!("{forged}/0"), b"x").await.status(),
        StatusCode::FORBIDDEN
    );
    let bare = format!("{}/ai/trickle/auth", s.base);
    let r = s.get(format!("{bare}/next")).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let message: serde_json::Value = r.json().await.expect("JSON error");
    assert!(message["error"]["message"].is_string());
    // The subscribe token cannot publish, delete or create.
    assert_eq!(
        s.post(format!("{subscribe}/0"), b"x").await.status(),
        StatusCode::FORBIDDEN
    );
    let r = s.http.delete(&subscribe).send().await.expect("DELETE");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = s.http.post(&subscribe).send().await.expect("create");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // The publish token can create (idempotently), publish and read.
    let r = s.http.post(&publish).send().await.expect("create");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        s.post(format!("{publish}/0"), b"x").await.status(),
        StatusCode::OK
    );
    assert_eq!(s.get(format!("{publish}/0")).await.status(), StatusCode::OK);
    // A bearer header works in place of the token in the path.
    let r = s
        .http
        .get(format!("{bare}/0"))
        .bearer_auth(&grant.subscribe_token)
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::OK);
    let r = s
        .http
        .post(format!("{bare}/1"))
        .bearer_auth(&grant.subscribe_token)
        .body("x")
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Unknown channels are 404 whatever the token; so is a create for one.
    let unknown = format!("{}/ai/trickle/nope.{}", s.base, grant.publish_token);
    let r = s.get(format!("{unknown}/0")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.headers().get(CLOSED_HEADER).is_none());
    assert_eq!(
        s.http.post(&unknown).send().await.expect("create").status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.get(format!("{}/ai/trickle/bad%20name.x/0", s.base))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    // Bad seqs.
    assert_eq!(
        s.get(format!("{subscribe}/-3")).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.get(format!("{subscribe}/abc")).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.post(format!("{publish}/-2"), b"x").await.status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_api_limits() {
    let s = start(TrickleConfig {
        max_channels: 2,
        ..TrickleConfig::default()
    })
    .await;
    s.server.create("a", "application/json").expect("a");
    assert!(matches!(
        s.server.create("a", "application/json"),
        Err(TrickleError::Exists(_))
    ));
    s.server.create("b", "application/json").expect("b");
    assert!(matches!(
        s.server.create("c", "application/json"),
        Err(TrickleError::TooMany(2))
    ));
    for bad in ["", "a.b", "a/b", "é", &"x".repeat(129)] {
        assert!(matches!(
            s.server.create(bad, "text/plain"),
            Err(TrickleError::BadName)
        ));
    }
    assert!(matches!(
        s.server.create("d", "bad\nmime"),
        Err(TrickleError::BadMime)
    ));
    assert!(s.server.close("a"));
    assert_eq!(s.server.channels(), 1);
    assert_eq!(s.metric("weir_trickle_channels", None), 1.0);
    let again = s.server.create("a", "application/json").expect("a again");
    assert_eq!(again.publish_token.len(), 32);
    assert_ne!(again.publish_token, again.subscribe_token);
    assert_eq!(
        again.publish_url("http://h:1/"),
        format!("http://h:1/ai/trickle/a.{}", again.publish_token)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_gone_mid_segment_aborts_it() {
    let s = start(TrickleConfig::default()).await;
    let (_, publish, subscribe) = s.channel("gone");
    let mut publisher = Publisher::new(s.http.clone(), publish.clone());
    let mut subscriber = Subscriber::new(s.http.clone(), subscribe.clone()).starting_at(0);
    let mut writer = publisher.begin().await.expect("begin");
    writer
        .send(Bytes::from_static(b"partial"))
        .await
        .expect("send");
    let mut segment = soon(subscriber.next())
        .await
        .expect("next")
        .expect("segment");
    let first = soon(segment.chunk()).await.expect("chunk").expect("data");
    assert_eq!(&first[..], b"partial");
    drop(writer);
    drop(publisher);
    // Not a clean end: the reader is told the segment was cut short.
    let end = soon(segment.chunk()).await;
    assert!(matches!(end, Err(TrickleError::Truncated(_))), "{end:?}");
    // A later reader is not handed the truncated segment: it is told to move on.
    let again = s.get(format!("{subscribe}/0")).await;
    assert_eq!(again.status().as_u16(), 470);

    // A raw POST that disconnects mid-body.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|c| (c, rx))
    }));
    let post = tokio::spawn(s.http.post(format!("{publish}/1")).body(body).send());
    tx.send(Ok(Bytes::from_static(b"abc"))).await.expect("send");
    let mut reader = soon(s.get(format!("{subscribe}/1"))).await;
    assert_eq!(
        &soon(reader.chunk()).await.expect("chunk").expect("data")[..],
        b"abc"
    );
    tx.send(Err(std::io::Error::other("gone")))
        .await
        .expect("send");
    assert!(soon(reader.chunk()).await.is_err());
    let _ = post.await;
    soon(async {
        while s.metric("weir_trickle_segments_total", Some("aborted")) < 2.0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // The channel carries on.
    let seq = Publisher::new(s.http.clone(), publish)
        .write(Bytes::from_static(b"fine"))
        .await
        .expect("write");
    let r = s.get(format!("{subscribe}/{seq}")).await;
    assert_eq!(&r.bytes().await.expect("body")[..], b"fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_channels_are_swept() {
    // Sweeps run when this test says, each right after the busy channel was written, so
    // only the channel nobody writes can be idle at a sweep, however slow the machine.
    let s = start(TrickleConfig {
        idle_timeout: Duration::from_millis(300),
        // Used by the background sweeper, started only for the second half.
        sweep_interval: Duration::from_millis(50),
        ..TrickleConfig::default()
    })
    .await;
    let (_, publish, subscribe) = s.channel("idle");
    let (_, busy, _) = s.channel("busy");
    let waiting = tokio::spawn({
        let http = s.http.clone();
        async move { http.get(format!("{subscribe}/-1")).send().await }
    });
    let mut publisher = Publisher::new(s.http.clone(), busy);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let swept = loop {
        assert!(tokio::time::Instant::now() < deadline, "never swept");
        publisher
            .write(Bytes::from_static(b"tick"))
            .await
            .expect("the busy channel is never swept");
        match s.server.sweep() {
            0 => tokio::time::sleep(Duration::from_millis(20)).await,
            n => break n,
        }
    };
    assert_eq!(swept, 1, "only the idle channel is swept");
    let r = soon(waiting).await.expect("task").expect("GET");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&r, CLOSED_HEADER).as_deref(), Some("terminated"));
    assert_eq!(s.server.channels(), 1, "the busy channel stays");
    assert_eq!(
        s.post(format!("{publish}/0"), b"x").await.status(),
        StatusCode::NOT_FOUND
    );

    // The background sweeper does the same on its own once the busy channel goes quiet (its
    // publisher is still there, with its next POST open).
    let sweeper = s.server.spawn_sweeper();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while s.server.channels() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sweeper never closed the quiet channel"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sweeper.abort();
    drop(publisher);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_segments_get_413() {
    let s = start(TrickleConfig {
        media: ChannelLimits {
            max_segment_bytes: 1000,
            max_channel_bytes: 1 << 20,
        },
        ..TrickleConfig::default()
    })
    .await;
    let (_, publish, subscribe) = s.channel("big");
    let r = s
        .http
        .post(format!("{publish}/0"))
        .body(vec![7u8; 5000])
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let mut publisher = Publisher::new(s.http.clone(), publish);
    let mut writer = publisher.begin().await.expect("begin");
    let mut result = Ok(());
    for _ in 0..50 {
        result = writer.send(Bytes::from(vec![1u8; 400])).await;
        if result.is_err() {
            break;
        }
    }
    let result = match result {
        Ok(()) => writer.finish().await,
        Err(e) => Err(e),
    };
    assert!(matches!(result, Err(TrickleError::TooLarge)), "{result:?}");
    assert!(publisher.write(Bytes::from(vec![1u8; 999])).await.is_ok());
    let r = s.get(format!("{subscribe}/-2")).await;
    assert_eq!(r.bytes().await.expect("body").len(), 999);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_follows_segments_in_order_until_close() {
    let s = start(TrickleConfig::default()).await;
    let (_, publish, subscribe) = s.channel("follow");
    let mut subscriber = Subscriber::new(s.http.clone(), subscribe);
    let (count_tx, mut count) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(segment) = subscriber.next().await.expect("next") {
            let seq = segment.seq();
            got.push((seq, segment.bytes(1 << 20).await.expect("bytes")));
            let _ = count_tx.send(got.len());
        }
        got
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut publisher = Publisher::new(s.http.clone(), publish);
    for i in 0..20u32 {
        let body = Bytes::from(format!("segment {i}").repeat(1 + i as usize * 100));
        assert_eq!(publisher.write(body).await.expect("write"), u64::from(i));
        // Stay within the ring of the reader (closing the channel drops what it holds).
        soon(count.wait_for(|n| *n + 2 > i as usize))
            .await
            .expect("reader");
    }
    soon(count.wait_for(|n| *n == 20)).await.expect("reader");
    publisher.close().await.expect("close");
    let got = soon(reader).await.expect("task");
    assert_eq!(got.len(), 20);
    for (i, (seq, body)) in got.iter().enumerate() {
        assert_eq!(*seq, i as u64);
        assert_eq!(body, &format!("segment {i}").repeat(1 + i * 100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_and_segment_delete() {
    let s = start(TrickleConfig::default()).await;
    let (_, publish, subscribe) = s.channel("reset");
    for seq in 0..3 {
        assert_eq!(
            s.post(format!("{publish}/{seq}"), b"old").await.status(),
            StatusCode::OK
        );
    }
    let r = s
        .http
        .post(format!("{publish}/0"))
        .header(RESET_HEADER, "1")
        .body("restarted")
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.get(format!("{subscribe}/2")).await.status().as_u16(), 470);
    let r = s.get(format!("{subscribe}/0")).await;
    assert_eq!(&r.bytes().await.expect("body")[..], b"restarted");
    assert_eq!(
        s.get(format!("{subscribe}/next"))
            .await
            .text()
            .await
            .expect("next"),
        "1"
    );

    // DELETE {ch}/{seq} ends a waiting segment: its reader moves on (470), its writer stops.
    let waiting = tokio::spawn({
        let http = s.http.clone();
        let url = format!("{subscribe}/1");
        async move { http.get(url).send().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = s
        .http
        .delete(format!("{publish}/1"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status(), StatusCode::OK);
    let r = soon(waiting).await.expect("task").expect("GET");
    assert_eq!(r.status().as_u16(), 470);
    let r = s
        .http
        .delete(format!("{publish}/42"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

async fn status_and_message(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.expect("a JSON error");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    (status, message.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_seqs_get_400_and_only_plain_numbers_are_accepted() {
    let s = start(TrickleConfig::default()).await;
    let (_, publish, subscribe) = s.channel("hostile");
    let (_, other, other_sub) = s.channel("bystander");
    for seq in [
        "9223372036854775807",
        "+1",
        "-3",
        "-0",
        "0x1",
        "1e3",
        "%201",
        "9007199254740993",
        "99999999999999999999999",
    ] {
        let (status, message) =
            status_and_message(s.post(format!("{publish}/{seq}"), b"x").await).await;
        assert_eq!(status, 400, "POST {seq}");
        assert!(message.contains("seq must be"), "POST {seq}: {message}");
        let (status, _) = status_and_message(s.get(format!("{subscribe}/{seq}")).await).await;
        assert_eq!(status, 400, "GET {seq}");
    }
    assert_eq!(
        s.post(format!("{publish}/-2"), b"x").await.status(),
        StatusCode::BAD_REQUEST
    );
    // The channel carries on from where it was: nothing moved its sequence.
    for seq in 0..2 {
        let r = s.post(format!("{publish}/{seq}"), b"fine").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, SEQ_HEADER), Some(seq.to_string()));
    }
    let next = s.get(format!("{subscribe}/next")).await;
    assert_eq!(next.text().await.expect("next"), "2");
    // A follower of the channel sees ordinary seqs, and other channels are unaffected.
    let mut subscriber = Subscriber::new(s.http.clone(), subscribe).starting_at(0);
    let segment = soon(subscriber.next())
        .await
        .expect("next")
        .expect("segment");
    assert_eq!(segment.seq(), 0);
    let seq = Publisher::new(s.http.clone(), other)
        .write(Bytes::from_static(b"other"))
        .await
        .expect("write");
    let r = s.get(format!("{other_sub}/{seq}")).await;
    assert_eq!(&r.bytes().await.expect("body")[..], b"other");
}

/// A server that answers every GET with segment `i64::MAX`, and `next` with `next`.
async fn lying_server(next: &'static str) -> String {
    use axum::http::HeaderMap;
    let app = axum::Router::new().route(
        "/ai/trickle/{ch}/{seq}",
        axum::routing::get(
            move |axum::extract::Path((_, seq)): axum::extract::Path<(String, String)>| async move {
                let mut h = HeaderMap::new();
                h.insert(SEQ_HEADER, i64::MAX.into());
                if seq == "next" {
                    return (h, next.to_owned());
                }
                (h, "x".to_owned())
            },
        ),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("{base}/ai/trickle/lies.token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_check_seq_arithmetic_against_a_lying_server() {
    let url = lying_server("18446744073709551615").await;
    let http = reqwest::Client::new();
    let mut subscriber = Subscriber::new(http.clone(), url.clone()).starting_at(0);
    let result = soon(subscriber.next()).await;
    assert!(
        matches!(result, Err(TrickleError::BadSeq(_))),
        "{:?}",
        result.err()
    );
    let mut publisher = Publisher::new(http.clone(), url.clone());
    let result = soon(publisher.begin()).await;
    assert!(
        matches!(result, Err(TrickleError::BadSeq(_))),
        "{:?}",
        result.err()
    );

    let url = lying_server("9223372036854775806").await;
    let mut publisher = Publisher::new(http, url);
    let result = soon(publisher.begin()).await;
    assert!(
        matches!(result, Err(TrickleError::BadSeq(_))),
        "{:?}",
        result.err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_channels_have_small_segment_caps() {
    let s = start(TrickleConfig::default()).await;
    let big = vec![b'{'; 2 << 20];
    for (name, mime) in [("ctl", "application/json"), ("data", "application/jsonl")] {
        let grant = s.server.create(name, mime).expect("create");
        let r = s
            .http
            .post(format!("{}/0", grant.publish_url(&s.base)))
            .body(big.clone())
            .send()
            .await
            .expect("POST");
        let (status, message) = status_and_message(r).await;
        assert_eq!(status, 413, "{name}");
        assert!(message.contains("1048576"), "{message}");
    }
    let events = s
        .server
        .create_kind("ev", "application/json", ChannelKind::Events)
        .expect("create");
    let r = s
        .http
        .post(format!("{}/0", events.publish_url(&s.base)))
        .body(vec![b'x'; 64 << 10])
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::OK, "a small message fits");
    // A media channel takes the same 2 MiB segment.
    let (_, media, _) = s.channel("media");
    let r = s
        .http
        .post(format!("{media}/0"))
        .body(big)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(ChannelKind::from_mime("video/MP2T"), ChannelKind::Media);
    assert_eq!(
        ChannelKind::from_mime("application/json"),
        ChannelKind::Data
    );
}

async fn post_bytes(s: &Setup, url: String, n: usize) -> StatusCode {
    s.http
        .post(url)
        .body(vec![7u8; n])
        .send()
        .await
        .expect("POST")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_caps_evict_and_the_node_budget_refuses_with_503() {
    const SEG: usize = 300_000;
    let s = start(TrickleConfig {
        media: ChannelLimits {
            max_segment_bytes: 512 << 10,
            max_channel_bytes: 700_000,
        },
        max_buffered_bytes: 1_000_000,
        closed_linger: Duration::ZERO,
        ..TrickleConfig::default()
    })
    .await;
    // One channel: past its cap, its oldest segments are evicted.
    let (_, one, one_sub) = s.channel("one");
    for seq in 0..4 {
        assert_eq!(
            post_bytes(&s, format!("{one}/{seq}"), SEG).await,
            StatusCode::OK
        );
    }
    assert_eq!(s.server.channel_buffered_bytes("one"), Some(2 * SEG));
    assert_eq!(s.get(format!("{one_sub}/0")).await.status().as_u16(), 470);
    let r = s.get(format!("{one_sub}/3")).await;
    assert_eq!(r.bytes().await.expect("body").len(), SEG);
    // More channels, until the node's budget is spent.
    let mut urls = vec![one];
    let mut refused = None;
    for i in 0..5 {
        let (_, url, _) = s.channel(&format!("more{i}"));
        let status = post_bytes(&s, format!("{url}/0"), SEG).await;
        urls.push(url);
        if status != StatusCode::OK {
            refused = Some(status);
            break;
        }
    }
    assert_eq!(refused, Some(StatusCode::SERVICE_UNAVAILABLE));
    assert!(s.server.buffered_bytes() <= 1_000_000);
    assert_eq!(s.server.buffered_bytes(), 3 * SEG);
    // Deleting the channels gives every byte back.
    for url in &urls {
        let r = s.http.delete(url).send().await.expect("DELETE");
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert_eq!(s.server.buffered_bytes(), 0);
    let (_, again, _) = s.channel("again");
    assert_eq!(
        post_bytes(&s, format!("{again}/0"), SEG).await,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_channels_linger_until_memory_is_needed() {
    const SEG: usize = 400_000;
    let s = start(TrickleConfig {
        max_buffered_bytes: 1_000_000,
        ..TrickleConfig::default()
    })
    .await;
    let (_, a, a_sub) = s.channel("a");
    assert_eq!(post_bytes(&s, format!("{a}/0"), SEG).await, StatusCode::OK);
    assert_eq!(post_bytes(&s, format!("{a}/1"), SEG).await, StatusCode::OK);
    s.http.delete(&a).send().await.expect("DELETE");
    assert_eq!(
        s.server.buffered_bytes(),
        2 * SEG,
        "kept for late subscribers"
    );
    let r = s.get(format!("{a_sub}/1")).await;
    assert_eq!(r.bytes().await.expect("body").len(), SEG);
    let (_, b, _) = s.channel("b");
    assert_eq!(post_bytes(&s, format!("{b}/0"), SEG).await, StatusCode::OK);
    assert_eq!(
        s.server.buffered_bytes(),
        SEG,
        "the closed channel made room"
    );
    let r = s.get(format!("{a_sub}/1")).await;
    assert_eq!(header(&r, CLOSED_HEADER).as_deref(), Some("terminated"));
}

/// Write `records` one segment each, then close the channel at once.
async fn publish_then_close(s: &Setup, publish: String, records: usize) {
    let mut publisher = Publisher::new(s.http.clone(), publish);
    for r in 0..records {
        let mut writer = publisher.begin().await.expect("begin");
        writer
            .send(Bytes::from(format!("{{\"record\":{r}}}\n")))
            .await
            .expect("send");
        writer.finish().await.expect("finish");
    }
    publisher.close().await.expect("close");
}

async fn collect(mut subscriber: Subscriber) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(segment) = subscriber.next().await.expect("next") {
        let body = segment.bytes(1 << 20).await.expect("bytes");
        got.push(String::from_utf8_lossy(&body).into_owned());
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_just_before_close_are_delivered() {
    const RECORDS: usize = 3;
    let s = start(TrickleConfig::default()).await;
    let expected: Vec<String> = (0..RECORDS)
        .map(|r| format!("{{\"record\":{r}}}\n"))
        .collect();
    for round in 0..50 {
        let grant = s
            .server
            .create(&format!("data-{round}"), "application/jsonl")
            .expect("create");
        let before = Subscriber::new(s.http.clone(), grant.subscribe_url(&s.base)).starting_at(0);
        let before = tokio::spawn(collect(before));
        publish_then_close(&s, grant.publish_url(&s.base), RECORDS).await;
        let after = Subscriber::new(s.http.clone(), grant.subscribe_url(&s.base)).starting_at(0);
        let after = soon(collect(after)).await;
        assert_eq!(
            after, expected,
            "round {round}: a subscriber started after the close"
        );
        let before = soon(before).await.expect("task");
        assert_eq!(
            before, expected,
            "round {round}: a subscriber started before"
        );
    }
}
