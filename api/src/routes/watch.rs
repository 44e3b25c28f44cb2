//! `GET /kv/watch/?prefix=P`: the changes this node stores, as server-sent
//! events (see `core::watch` for what is guaranteed).
//!
//! Each event: `id` = its change-log position (send it back as
//! `Last-Event-ID`, or `?last_event_id=`, to resume after it), `event` =
//! `put` or `delete`, `data` = `{"key", "version", "value", "deleted"}`
//! with the key's record as read just after the change (at least as new). A resumed watch first gets
//! every change after its position still in the log (a `reset` event
//! first when the log was trimmed past it: list the keys again), then the
//! live ones. A watcher too slow for the feed gets a `too_slow` event and
//! is disconnected.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use shared::core::limits::WATCH_READ_LEN;
use shared::core::record::Record;
use shared::core::watch::{Change, LogPosition, WatchEvent, missed_on_resume};
use shared::node::watch::ChangeBatch;
use shared::storage::{Store, StoreError};
use tokio::sync::{OwnedSemaphorePermit, broadcast};
use tracing::debug;

use super::{Params, checked_key, only_params, params};
use crate::error::ApiError;
use crate::state::AppState;

/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Where a watch is: sending what the log holds after a resume point, or
/// the live feed; done once it told the client it fell behind.
enum Phase {
    Backlog,
    Live,
    Done,
}

struct Watch {
    store: Store,
    prefix: Option<String>,
    after: LogPosition,
    phase: Phase,
    rx: broadcast::Receiver<ChangeBatch>,
    /// Held while the watcher is connected (the bound on watchers).
    _permit: OwnedSemaphorePermit,
}

fn resume_point(params: &Params, headers: &HeaderMap) -> Result<Option<LogPosition>, ApiError> {
    let header = headers
        .get("last-event-id")
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .map_err(|_| ApiError::bad_request("bad_last_event_id", "Last-Event-ID is not text"))?;
    match params.get("last_event_id").cloned().or(header) {
        None => Ok(None),
        Some(text) if text.trim().is_empty() => Ok(None),
        Some(text) => text.trim().parse().map(Some).map_err(|_| {
            ApiError::bad_request(
                "bad_last_event_id",
                "Last-Event-ID (last_event_id) must be an event id this node sent, like 1796015047440-0",
            )
        }),
    }
}

impl Watch {
    /// Ends the watch after one `error` event saying why.
    fn end(mut self, code: &str, message: &str) -> (Vec<Event>, Watch) {
        self.phase = Phase::Done;
        (vec![error_event(code, message)], self)
    }
}

/// `GET /kv/watch/?prefix=P[&last_event_id=ID]`.
pub async fn watch(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: RawQuery,
) -> Result<Response, ApiError> {
    let params = params(q)?;
    only_params(&params, &["prefix", "last_event_id"], "a watch")?;
    let prefix = match params.get("prefix").map(String::as_str) {
        None => None,
        Some(p) => {
            checked_key(&state, p)?;
            Some(p.to_owned())
        }
    };
    let resume = resume_point(&params, &headers)?;
    let Some(feed) = state.watch.as_ref() else {
        return Err(ApiError::ServiceUnavailable {
            code: "watch_disabled",
            message: "this node keeps no change log (KV_WATCH_LOG_LEN=0)".to_owned(),
        });
    };
    // Subscribed before the log is read: nothing falls between the two.
    let Some((permit, rx)) = feed.subscribe() else {
        return Err(ApiError::ServiceUnavailable {
            code: "too_many_watchers",
            message:
                "this node serves as many watchers as it can; retry later or watch another node"
                    .to_owned(),
        });
    };
    let store = state.coord.store().clone();
    let bounds = store.change_log_bounds().await?;
    let reset = resume.is_some_and(|p| missed_on_resume(p, &bounds));
    let watch = Watch {
        store,
        prefix,
        after: resume.or(bounds.newest).unwrap_or_default(),
        phase: if resume.is_some() {
            Phase::Backlog
        } else {
            Phase::Live
        },
        rx,
        _permit: permit,
    };
    let first = reset.then(|| {
        Event::default().event("reset").data(
            r#"{"code":"changes_dropped","message":"the change log no longer holds every change after Last-Event-ID; list the keys again"}"#,
        )
    });
    let events = stream::iter(first)
        .chain(stream::unfold(watch, next_events).flat_map(stream::iter))
        .map(Ok::<_, Infallible>);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// The next events of a watch (possibly none), or `None` when it ends.
async fn next_events(mut w: Watch) -> Option<(Vec<Event>, Watch)> {
    loop {
        // Each change with the key's record: the live feed reads the records
        // once per batch for every watcher; a backlog page reads its own.
        let changes: Vec<(Change, Option<Record>)> = match w.phase {
            Phase::Done => return None,
            Phase::Backlog => match backlog_page(&w.store, w.after, w.prefix.as_deref()).await {
                Ok((page, last, full)) => {
                    w.after = last;
                    if !full {
                        w.phase = Phase::Live;
                    }
                    page
                }
                Err(error) => {
                    debug!(%error, "watch: cannot read the change log or its records");
                    return Some(w.end(
                        "storage_unavailable",
                        "this node's storage does not answer; reconnect with Last-Event-ID",
                    ));
                }
            },
            Phase::Live => {
                match w.rx.recv().await {
                    Ok(batch) => {
                        let mut page = Vec::new();
                        let seen = w.after;
                        for (change, record) in batch.iter().filter(|(c, _)| c.position > seen) {
                            w.after = change.position;
                            if w.prefix
                                .as_deref()
                                .is_none_or(|p| change.key.starts_with(p))
                            {
                                page.push((change.clone(), record.clone()));
                            }
                        }
                        page
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        debug!(missed, "watch: a watcher fell behind the feed");
                        return Some(w.end("too_slow", "this watcher fell behind the change feed; reconnect with Last-Event-ID"));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        };
        if changes.is_empty() {
            continue;
        }
        let events = changes
            .iter()
            .map(|(change, record)| {
                let event = WatchEvent::new(change, record.as_ref());
                let data = serde_json::to_string(&event).unwrap_or_default();
                Event::default()
                    .id(change.position.to_string())
                    .event(event.kind())
                    .data(data)
            })
            .collect();
        return Some((events, w));
    }
}

/// One page of the change log after `after`: the changes of `prefix` with
/// their records, the page's last position (where the next page starts,
/// whether or not its changes were of the prefix), and whether the page
/// was full (more may follow).
async fn backlog_page(
    store: &Store,
    after: LogPosition,
    prefix: Option<&str>,
) -> Result<(Vec<(Change, Option<Record>)>, LogPosition, bool), StoreError> {
    let (page, more) = store.changes_after(Some(after), WATCH_READ_LEN).await?;
    let last = page.last().map_or(after, |c| c.position);
    let wanted: Vec<Change> = page
        .into_iter()
        .filter(|c| prefix.is_none_or(|p| c.key.starts_with(p)))
        .collect();
    let keys: Vec<String> = wanted.iter().map(|c| c.key.clone()).collect();
    let records = store.get_many(&keys).await?;
    Ok((wanted.into_iter().zip(records).collect(), last, more))
}

fn error_event(code: &str, message: &str) -> Event {
    let data = serde_json::json!({ "code": code, "message": message });
    Event::default().event("error").data(data.to_string())
}
