//! Leases that keep two runs of one periodic task apart.
//!
//! The scheduler pushes one job per due run, but runs of one task may still
//! meet: a run slower than the task's period, or a backlog two workers pick
//! up at once. A worker takes the task's lease (`kv:{node}:lease:{task}`,
//! holding its own name) before a run, renews it while the run goes on and
//! releases it at the end; a run that finds the lease taken is skipped. A
//! holder that dies mid-run frees the lease when its TTL expires.

use std::time::Duration;

use super::{JobQueues, QueueError};
use crate::keyspace::lease_key;

/// Extends the lease by `ARGV[2]` ms if `ARGV[1]` still holds it.
const RENEW_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Deletes the lease if `ARGV[1]` still holds it.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl JobQueues {
    /// Takes the lease of `task` for `ttl` if nobody holds it; whether
    /// `holder` got it.
    pub async fn try_lease(
        &self,
        task: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, QueueError> {
        let mut conn = self.connection();
        let got: Option<String> = redis::cmd("SET")
            .arg(lease_key(self.node(), task))
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms(ttl))
            .query_async(&mut conn)
            .await?;
        Ok(got.is_some())
    }

    /// Extends the lease of `task` to `ttl` from now; false if `holder` no
    /// longer holds it (it expired, and maybe another took it).
    pub async fn renew_lease(
        &self,
        task: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, QueueError> {
        let mut conn = self.connection();
        let renewed: i64 = redis::Script::new(RENEW_SCRIPT)
            .key(lease_key(self.node(), task))
            .arg(holder)
            .arg(ttl_ms(ttl))
            .invoke_async(&mut conn)
            .await?;
        Ok(renewed == 1)
    }

    /// Gives the lease of `task` back, if `holder` still holds it.
    pub async fn release_lease(&self, task: &str, holder: &str) -> Result<(), QueueError> {
        let mut conn = self.connection();
        let _released: i64 = redis::Script::new(RELEASE_SCRIPT)
            .key(lease_key(self.node(), task))
            .arg(holder)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}
