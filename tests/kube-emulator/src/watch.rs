//! Watch streams: newline-delimited `{"type", "object"}` events, with selector-aware ADDED/DELETED
//! when an object starts or stops matching, bookmarks, `timeoutSeconds`, and the ERROR event with a
//! 410 `Status` the API server sends when the requested resourceVersion is too old.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::resources::ResourceType;
use crate::status::ApiError;
use crate::store::{Event, EventType, ListOptions};

/// What one watch request asked for.
#[derive(Clone, Debug)]
pub struct WatchParams {
    /// The resource.
    pub rt: ResourceType,
    /// The namespace, or all.
    pub namespace: Option<String>,
    /// Selectors.
    pub selectors: ListOptions,
    /// `allowWatchBookmarks`.
    pub bookmarks: bool,
    /// `sendInitialEvents`: end the initial events with the `k8s.io/initial-events-end` bookmark.
    pub initial_events_end: bool,
    /// `timeoutSeconds`.
    pub timeout: Option<Duration>,
    /// How often bookmarks are sent (the API server: about a minute; tests want it sooner).
    pub bookmark_interval: Duration,
    /// Whether the client asked for `Table` objects (kubectl get -w).
    pub table: bool,
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

/// The single ERROR event of a watch that cannot start.
pub fn error_line(err: &ApiError) -> Bytes {
    line("ERROR", &err.to_status())
}

fn bookmark(rt: &ResourceType, rv: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        &json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": metadata}),
    )
}

/// The event a watcher with these parameters sees, if any.
fn translate(event: &Event, params: &WatchParams) -> Option<Bytes> {
    let rt = &params.rt;
    if event.group != rt.group || event.plural != rt.plural {
        return None;
    }
    if let Some(ns) = &params.namespace
        && rt.namespaced
        && &event.namespace != ns
    {
        return None;
    }
    let now_matches = params.selectors.matches(&event.object);
    let was_matching = event.old.as_ref().is_some_and(|o| params.selectors.matches(o));
    let kind = match event.kind {
        EventType::Added if now_matches => EventType::Added,
        EventType::Modified => match (was_matching, now_matches) {
            (true, true) => EventType::Modified,
            (false, true) => EventType::Added,
            (true, false) => EventType::Deleted,
            (false, false) => return None,
        },
        EventType::Deleted if now_matches => EventType::Deleted,
        _ => return None,
    };
    let mut object = (*event.object).clone();
    object["apiVersion"] = json!(rt.api_version());
    object["kind"] = json!(rt.kind);
    if params.table {
        object = crate::table::from_object(rt, &object);
    }
    Some(line(kind.as_str(), &object))
}

/// Runs a watch in a task; the receiver yields the stream's chunks and ends with it.
pub fn spawn(
    initial: Vec<Arc<Event>>,
    start_rv: u64,
    mut rx: broadcast::Receiver<Arc<Event>>,
    params: WatchParams,
) -> mpsc::Receiver<Bytes> {
    let (tx, out) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut last_rv = start_rv;
        for event in &initial {
            if let Some(chunk) = translate(event, &params)
                && tx.send(chunk).await.is_err()
            {
                return;
            }
            last_rv = last_rv.max(event.rv);
        }
        if params.initial_events_end && tx.send(bookmark(&params.rt, last_rv, true)).await.is_err() {
            return;
        }
        let deadline = params.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut ticker = tokio::time::interval(params.bookmark_interval);
        ticker.tick().await;
        loop {
            let timeout = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                received = rx.recv() => match received {
                    Ok(event) => {
                        // Events the backlog already covered arrive again on the live channel.
                        if event.rv <= last_rv {
                            continue;
                        }
                        last_rv = event.rv;
                        if let Some(chunk) = translate(&event, &params)
                            && tx.send(chunk).await.is_err()
                        {
                            return;
                        }
                    }
                    // A watcher too slow for the buffer is closed; clients re-list, as after a
                    // dropped connection to a real API server.
                    Err(_) => return,
                },
                _ = ticker.tick() => {
                    if params.bookmarks && tx.send(bookmark(&params.rt, last_rv, false)).await.is_err() {
                        return;
                    }
                    if tx.is_closed() {
                        return;
                    }
                }
                _ = timeout => return,
            }
        }
    });
    out
}
