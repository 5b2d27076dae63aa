//! `GET /v1/watch/{key}` (`?prefix` for every key under the path, `?prev` for each key's
//! value before the change): every change, as server-sent events.
//!
//! ```text
//! event: ready                 the watch runs; its id is where it starts
//! id: 0:1042,1:977
//! data: {"cursor":"0:1042,1:977"}
//!
//! id: 0:1043,1:977             one raft entry's changes (a batch, a transaction: together)
//! data: {"shard":0,"index":1042,"changes":[{"type":"put","key":"app/x","value":"1",...}]}
//!
//! event: progress              nothing changed on a shard up to here (every heartbeat)
//! id: 0:1043,1:990
//! data: {"shard":1,"index":989}
//!
//! : heartbeat                  a comment while idle, so proxies keep the stream open
//!
//! event: end                   the gateway is shutting down: reconnect (anywhere)
//! data: {"reason":"shutting_down"}
//! ```
//!
//! Every event's `id` is the cursor after it: per shard, the next raft index wanted. A
//! client that reconnects with `Last-Event-ID` (as `EventSource` does by itself), or with
//! `?from=CURSOR`, continues exactly after the last event it saw, at any gateway: nothing
//! missed, nothing repeated. A cursor older than the history the cluster keeps is answered
//! 410 `compacted`: list again. Errors found before the stream starts (a bad cursor, no
//! permission) are HTTP errors; an error after it is an `event: error`, then the end.

use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use corekv_client::watch::{Change, ChangeKind, WatchScope};
use corekv_client::{Cursor, ShardId, Watch, WatchMessage, WatchSpec};
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use tokio::sync::{watch as signal, OwnedSemaphorePermit};

use crate::api::{add_meta, path_key, put_bytes, Caller, Query};
use crate::error::{ApiError, ApiResult};
use crate::Gateway;

/// The `Last-Event-ID` request header.
const LAST_EVENT_ID: &str = "last-event-id";

/// How long a watch may take to start (every shard's first message) before it is answered
/// 503.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Messages a starting watch holds while it waits for every shard's first.
const START_BUFFER_MAX: usize = 10_000;

/// `GET /v1/watch/{key}`: see the module docs.
pub(crate) async fn watch(
    State(gateway): State<Arc<Gateway>>,
    uri: Uri,
    headers: HeaderMap,
    Caller(client): Caller,
) -> ApiResult<Response> {
    let key = path_key(uri.path(), "/v1/watch")?;
    let query = Query::taking(&uri, &["prefix", "prev", "from"])?;
    let scope = match query.flag("prefix")? {
        true => WatchScope::Prefix(key),
        false if key.is_empty() => {
            return Err(ApiError::bad_request("name a key (/v1/watch/KEY) or add ?prefix"))
        }
        false => WatchScope::Key(key),
    };
    let resume = match headers.get(LAST_EVENT_ID) {
        Some(id) => {
            Some(id.to_str().map_err(|_| ApiError::bad_request("Last-Event-ID: not text"))?)
        }
        None => query.get("from"),
    };
    let from = match resume.filter(|text| !text.is_empty()) {
        Some(text) => {
            Some(text.parse::<Cursor>().map_err(|e| ApiError::bad_request(e.to_string()))?)
        }
        None => None,
    };
    let permit = gateway.watches.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable("the gateway is at its limit of watches: try another, or later")
    })?;
    let shards: BTreeSet<ShardId> = client.shards_of(&scope).into_iter().collect();
    let spec = WatchSpec {
        scope,
        from: from.clone(),
        prev_value: query.flag("prev")?,
        progress: Some(gateway.heartbeat),
    };
    let mut watch = client.watch(spec)?;
    let (cursor, buffered) = tokio::time::timeout(START_TIMEOUT, start(&mut watch, from, &shards))
        .await
        .map_err(|_| ApiError::unavailable("the watch did not start in time"))??;
    let mut events = VecDeque::new();
    let mut position = cursor.clone();
    events.push_back(
        Event::default()
            .event("ready")
            .id(cursor.to_string())
            .data(json!({"cursor": cursor.to_string()}).to_string()),
    );
    for message in buffered {
        events.push_back(event_of(&message, &mut position));
    }
    gateway.metrics.watch_started();
    let follow = Follow {
        watch,
        position,
        events,
        shutdown: gateway.shutdown.clone(),
        done: false,
        gateway: gateway.clone(),
        _permit: permit,
    };
    let stream = futures_util::stream::unfold(follow, |mut follow| async move {
        let event = follow.next().await?;
        Some((Ok::<_, Infallible>(event), follow))
    });
    let keep_alive = KeepAlive::new().interval(gateway.heartbeat).text("heartbeat");
    let mut response = Sse::new(stream).keep_alive(keep_alive).into_response();
    // Proxies that buffer responses (nginx) pass the stream on as it comes.
    response.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Waits until every shard the watch follows has sent its first message: a shard watched
/// from now says where it starts (so the first id already names every shard: a shard missing
/// from a resume cursor would start from "now" again and skip what changed meanwhile), and a
/// shard resumed from a cursor has been found able to (a compacted cursor, a user who may not
/// read the keys: an HTTP error, not an event after a 200 that an `EventSource` would
/// reconnect to for ever). Returns the starting cursor and the messages seen meanwhile, at
/// most [`START_BUFFER_MAX`].
async fn start(
    watch: &mut Watch,
    from: Option<Cursor>,
    shards: &BTreeSet<ShardId>,
) -> ApiResult<(Cursor, Vec<WatchMessage>)> {
    let mut cursor = from.unwrap_or_default();
    let mut heard = BTreeSet::new();
    let mut buffered = Vec::new();
    while heard.len() < shards.len() {
        if buffered.len() >= START_BUFFER_MAX {
            if shards.iter().all(|&s| cursor.next(s).is_some()) {
                break; // a long replay: the rest streams as it comes
            }
            return Err(ApiError::bad_request(
                "the cursor names only some of the watched shards, and the others replay too \
                 much history to wait for: resume from an event id, which names every shard",
            ));
        }
        let message = match watch.next().await {
            Some(message) => message?,
            None => return Err(ApiError::unavailable("the watch ended before it started")),
        };
        let (shard, index) = message.position();
        heard.insert(shard);
        if cursor.next(shard).is_none() {
            // The first message of a shard watched from now: a shard going live reports
            // the index before its first (a progress); an event is its own first.
            let next = match &message {
                WatchMessage::Event(_) => index,
                WatchMessage::Progress { .. } => index + 1,
            };
            cursor.set(shard, next);
        }
        buffered.push(message);
    }
    Ok((cursor, buffered))
}

/// A running stream.
struct Follow {
    watch: Watch,
    /// The cursor after the last event produced.
    position: Cursor,
    /// Events produced and not yet sent.
    events: VecDeque<Event>,
    shutdown: signal::Receiver<bool>,
    done: bool,
    gateway: Arc<Gateway>,
    _permit: OwnedSemaphorePermit,
}

impl Follow {
    /// The next event, or `None` once the stream has ended.
    async fn next(&mut self) -> Option<Event> {
        if let Some(event) = self.events.pop_front() {
            return Some(event);
        }
        if self.done {
            return None;
        }
        let message = tokio::select! {
            message = self.watch.next() => message,
            _ = self.shutdown.wait_for(|&stopping| stopping) => {
                self.done = true;
                return Some(end("shutting_down"));
            }
        };
        match message {
            Some(Ok(message)) => {
                if let WatchMessage::Event(event) = &message {
                    self.gateway.metrics.watch_events(event.changes.len());
                }
                Some(event_of(&message, &mut self.position))
            }
            Some(Err(error)) => {
                self.done = true;
                let error = ApiError::from(error);
                Some(Event::default().event("error").data(error.body().to_string()))
            }
            None => {
                self.done = true;
                Some(end("ended"))
            }
        }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        self.gateway.metrics.watch_ended();
    }
}

fn end(reason: &str) -> Event {
    Event::default().event("end").data(json!({"reason": reason}).to_string())
}

/// The event of `message`, its id the cursor after it.
fn event_of(message: &WatchMessage, position: &mut Cursor) -> Event {
    let (shard, index) = message.position();
    position.advance(shard, index);
    let event = Event::default().id(position.to_string());
    match message {
        WatchMessage::Event(e) => {
            let changes: Vec<Value> = e.changes.iter().map(|c| change_json(c, shard)).collect();
            event
                .data(json!({"shard": shard.get(), "index": index, "changes": changes}).to_string())
        }
        WatchMessage::Progress { .. } => {
            event.event("progress").data(json!({"shard": shard.get(), "index": index}).to_string())
        }
    }
}

fn change_json(change: &Change, shard: ShardId) -> Value {
    let mut object = Map::new();
    let kind = match change.kind {
        ChangeKind::Put => "put",
        ChangeKind::Delete => "delete",
    };
    object.insert("type".into(), json!(kind));
    put_bytes(&mut object, "key", &change.key);
    if let Some(value) = &change.value {
        put_bytes(&mut object, "value", &value.value);
        add_meta(&mut object, &value.meta, shard);
    }
    if change.kind == ChangeKind::Delete {
        object.insert("expired".into(), json!(change.expired));
    }
    if let Some(prev) = &change.prev {
        let mut before = Map::new();
        if let Some(value) = &prev.value {
            put_bytes(&mut before, "value", value);
        }
        add_meta(&mut before, &prev.meta, shard);
        object.insert("prev".into(), Value::Object(before));
    }
    Value::Object(object)
}
