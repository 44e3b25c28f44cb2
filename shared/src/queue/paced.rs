//! The Redis connection a worker's queue storage fetches through: it
//! answers a fetch that found no job only after [`POLL_INTERVAL_MS`].
//!
//! apalis-redis 1.0 fetches again as soon as the worker's task is woken,
//! and an empty fetch leaves it woken again at once: an idle worker was
//! measured fetching about 550 times a second per queue (three queues per
//! worker), which kept each idle worker near a fifth of a core and its Redis
//! near as much, and took that CPU from the requests under load. Holding the
//! empty answer back turns the loop into the poll the configuration asks for
//! (at most one empty fetch per queue per interval), while a fetch that finds
//! jobs is answered at once, so a busy queue is drained without waiting.
//!
//! What wakes an idle worker to fetch again is [`PollEvery`]: apalis's own
//! `IntervalStrategy` re-arms its timer without polling it, so when the
//! timer fires in the same wake-up as an empty fetch ends (which the held
//! back answer makes likely), no timer is left to wake the worker: it slept
//! until its next liveness beat (2 s), or for good when that beat's wake-up
//! had been spent during a fetch, and periodic jobs ran late or were skipped
//! as stale.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis::prelude::{PollSnapshot, PollStrategy};
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::time::{Instant, Sleep};

use super::POLL_INTERVAL_MS;

/// Keys of apalis-redis's fetch script (`fetch_next.lua`).
const FETCH_SCRIPT_KEYS: &[u8] = b"7";

/// A [`ConnectionManager`] that holds back empty fetches (see the module docs).
#[derive(Clone)]
pub struct PacedConnection {
    inner: ConnectionManager,
    idle_wait: Duration,
}

impl PacedConnection {
    pub fn new(inner: ConnectionManager) -> Self {
        PacedConnection {
            inner,
            idle_wait: Duration::from_millis(POLL_INTERVAL_MS),
        }
    }
}

/// Whether `cmd` runs a script with the fetch script's number of keys
/// (`EVALSHA sha 7 ...` or `EVAL script 7 ...`).
fn is_fetch(cmd: &Cmd) -> bool {
    let mut args = cmd.args_iter().map(|a| match a {
        redis::Arg::Simple(bytes) => bytes,
        _ => &[][..],
    });
    let name = args.next().unwrap_or_default();
    let script = name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL");
    script && args.nth(1) == Some(FETCH_SCRIPT_KEYS)
}

/// Whether a fetch found nothing: its answer is `{results, meta}` with both
/// empty (what `fetch_next.lua` returns when the queue is empty).
fn is_empty_fetch(reply: &Value) -> bool {
    let empty =
        |v: &Value| matches!(v, Value::Array(items) if items.is_empty()) || *v == Value::Nil;
    matches!(reply, Value::Array(parts) if parts.len() == 2 && parts.iter().all(empty))
}

impl ConnectionLike for PacedConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let reply = self.inner.req_packed_command(cmd).await?;
            if is_fetch(cmd) && is_empty_fetch(&reply) {
                tokio::time::sleep(self.idle_wait).await;
            }
            Ok(reply)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.inner.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

/// Wakes a worker every `period` to fetch again (the poll strategy of every
/// queue's worker; see the module docs for why not apalis's own).
#[derive(Debug)]
pub struct PollEvery {
    period: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl PollEvery {
    pub fn new(period: Duration) -> Self {
        PollEvery {
            period,
            timer: None,
        }
    }
}

impl Clone for PollEvery {
    /// A copy starts its own timer.
    fn clone(&self) -> Self {
        PollEvery::new(self.period)
    }
}

impl PollStrategy for PollEvery {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        let period = self.period;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(period)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Fired: arm the next tick and poll it, so that it will wake this
        // task whatever the caller does next.
        timer.as_mut().reset(Instant::now() + period);
        let _armed = timer.as_mut().poll(cx);
        Poll::Ready(Some(()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    use super::*;

    #[test]
    fn only_a_seven_key_script_is_a_fetch() {
        let mut fetch = redis::cmd("EVALSHA");
        fetch.arg("0123abcd").arg(7).arg("workers").arg("active");
        assert!(is_fetch(&fetch));
        let mut eval = redis::cmd("eval");
        eval.arg("return 1").arg("7");
        assert!(is_fetch(&eval));
        let mut other_script = redis::cmd("EVALSHA");
        other_script.arg("0123abcd").arg(3).arg("k");
        assert!(!is_fetch(&other_script));
        let mut not_a_script = redis::cmd("HGET");
        not_a_script.arg("h").arg("7");
        assert!(!is_fetch(&not_a_script));
        assert!(!is_fetch(&redis::cmd("EVALSHA")));
    }

    #[test]
    fn an_empty_fetch_is_two_empty_lists() {
        let empty = Value::Array(vec![Value::Array(vec![]), Value::Array(vec![])]);
        assert!(is_empty_fetch(&empty));
        let job = Value::Array(vec![
            Value::Array(vec![Value::BulkString(b"{}".to_vec())]),
            Value::Array(vec![Value::Array(vec![])]),
        ]);
        assert!(!is_empty_fetch(&job));
        assert!(!is_empty_fetch(&Value::Int(0)));
        assert!(!is_empty_fetch(&Value::Array(vec![])));
    }

    /// Counts its wake-ups.
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// After every tick the strategy has armed the next one: polled once
    /// per wake-up (as apalis does, whatever else the wake-up finds), it
    /// keeps waking the task at its period, tick after tick.
    #[tokio::test(start_paused = true)]
    async fn every_tick_arms_the_next_one() {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);
        let mut strategy = PollEvery::new(Duration::from_millis(50));
        let snapshot = PollSnapshot::default();
        assert!(strategy.poll_drive(&mut cx, &snapshot).is_pending());
        for tick in 1..=5 {
            let woken = counter.0.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(51)).await;
            assert_eq!(
                counter.0.load(Ordering::SeqCst),
                woken + 1,
                "tick {tick}: the armed timer woke the task"
            );
            assert!(strategy.poll_drive(&mut cx, &snapshot).is_ready());
        }
    }
}
