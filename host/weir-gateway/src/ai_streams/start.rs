//! Starting a live AI stream: the start request checked, the stream started on an
//! orchestrator, registered under its id and RTMP key, handed to its owner task, and the
//! answer's URLs.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc};
use weir_protocol::byoc::{JobRequest, StreamStart, StreamUrls};
use weir_protocol::AiHttpError;

use crate::dispatch::err;

use super::{AiStream, AiStreams, Command, Owner, Session, Status};

impl AiStreams {
    /// Start a stream of `job.capability`: pick, pay and start on an orchestrator, then hand
    /// it to its owner task.
    pub(super) async fn start(
        self: &Arc<Self>,
        job: JobRequest,
        start: StreamStart,
    ) -> Result<StreamUrls, AiHttpError> {
        let id = stream_id(&start)?;
        self.check_room(&id)?;
        let params = if start.params.is_null() {
            serde_json::json!({})
        } else {
            start.params
        };
        let mut owner = Owner::new(self.clone(), id.clone(), job, params.clone());
        let session = owner.start_session().await?;
        let (commands, rx) = mpsc::channel(16);
        let stream = AiStream::running(&id, commands.clone(), &owner.job, &session, params);
        let key = format!("{:032x}", rand::random::<u128>());
        if !self.register(&stream, &key) {
            owner.session = Some(session);
            owner
                .stop_session("a stream with this id started meanwhile")
                .await;
            return Err(err(409, format!("stream `{id}` already exists")));
        }
        owner.stream = Some(stream);
        owner.commands = Some(commands);
        owner.attach(session);
        tokio::spawn(owner.run(rx, key.clone()));
        Ok(self.urls(&id, &key))
    }

    /// Refuse a stream whose id is taken, or one more than `max_streams`.
    fn check_room(&self, id: &str) -> Result<(), AiHttpError> {
        let map = self.map.lock();
        if map.contains_key(id) {
            return Err(err(409, format!("stream `{id}` already exists")));
        }
        if map.len() >= self.streams_config().max_streams {
            return Err(err(
                503,
                format!("{} streams are live (max_streams)", map.len()),
            ));
        }
        Ok(())
    }

    /// Make `stream` known by its id and its RTMP `key`; `false` when a stream with its id
    /// started meanwhile.
    fn register(&self, stream: &Arc<AiStream>, key: &str) -> bool {
        let mut map = self.map.lock();
        if map.contains_key(&stream.id) {
            return false;
        }
        map.insert(stream.id.clone(), stream.clone());
        self.keys.lock().insert(key.to_owned(), stream.id.clone());
        true
    }

    /// Where to publish stream `id` (with its RTMP `key`), watch it, and update, query, read
    /// and stop it.
    fn urls(&self, id: &str, key: &str) -> StreamUrls {
        let public = self.config.public_url.trim_end_matches('/');
        let base = format!("{public}/process/stream/{id}");
        let rtmp_base = &self.streams_config().rtmp_base;
        StreamUrls {
            stream_id: id.to_owned(),
            rtmp_url: format!("{}/{key}", rtmp_base.trim_end_matches('/')),
            whip_url: String::new(),
            whep_url: String::new(),
            rtmp_output_url: String::new(),
            hls_url: format!("{public}/stream/{id}.m3u8"),
            update_url: format!("{base}/update"),
            status_url: format!("{base}/status"),
            data_url: format!("{base}/data"),
            stop_url: format!("{base}/stop"),
        }
    }
}

/// The id of the stream `start` asks for (a random one when it names none); refuses what the
/// gateway does not support yet (`rtmp_output`) and ids that are not URL-safe.
fn stream_id(start: &StreamStart) -> Result<String, AiHttpError> {
    if !start.rtmp_output.is_empty() {
        return Err(err(
            501,
            "rtmp_output is not supported yet: watch the stream over HLS",
        ));
    }
    weir_protocol::ids::stream_id_or_new(&start.stream_id).map_err(|e| err(400, e))
}

impl AiStream {
    /// Stream `id` of `job`'s capability, running on `session`'s orchestrator with `params`;
    /// its owner task listens on `commands`.
    fn running(
        id: &str,
        commands: mpsc::Sender<Command>,
        job: &JobRequest,
        session: &Session,
        params: serde_json::Value,
    ) -> Arc<AiStream> {
        let (data, _) = broadcast::channel(256);
        Arc::new(AiStream {
            id: id.to_owned(),
            commands,
            status: Mutex::new(Status {
                stream_id: id.to_owned(),
                capability: job.capability.clone(),
                state: "running",
                orchestrator: Some(session.choice.url.clone()),
                swaps: 0,
                segments_in: 0,
                segments_out: 0,
                paid: session.paid,
                charged: 0,
                params,
                last_event: None,
                stop_reason: None,
                error: None,
            }),
            data,
        })
    }
}

impl Owner {
    /// The owner of stream `id` of `job`, before it runs anywhere.
    fn new(
        streams: Arc<AiStreams>,
        id: String,
        job: JobRequest,
        params: serde_json::Value,
    ) -> Owner {
        Owner {
            streams,
            id,
            job,
            params,
            session: None,
            generation: 0,
            tried: Vec::new(),
            swaps: Vec::new(),
            stream: None,
            commands: None,
        }
    }
}
