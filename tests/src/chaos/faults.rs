//! Injecting and undoing faults: iptables and netem between the nodes'
//! addresses, and signals to the nodes' processes.

use std::process::Command;

use crate::Cluster;

use super::schedule::{CLOCK_DRIFT_MS_MAX, Fault};

fn run_cmd(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Network faults between the nodes' addresses: an iptables chain of DROP
/// rules jumped to from OUTPUT, and a netem queue on `lo` for packets to one
/// address. Everything is removed on drop.
pub struct Net {
    chain: String,
    hosts: Vec<String>,
    netem: bool,
    /// Whether this kernel has the `prio` and `netem` queueing disciplines
    /// (some sandboxed kernels have none); without them a slow link is
    /// packet loss alone, from an iptables `statistic` rule.
    pub netem_supported: bool,
}

impl Net {
    pub fn new(subnet: u8, hosts: Vec<String>) -> Result<Net, String> {
        let chain = format!("KVCHAOS{subnet}");
        // A chain left over from a run that was killed is reused, emptied.
        if run_cmd("iptables", &["-N", &chain]).is_err() {
            run_cmd("iptables", &["-F", &chain])?;
        }
        let _ = run_cmd("iptables", &["-D", "OUTPUT", "-j", &chain]);
        run_cmd("iptables", &["-I", "OUTPUT", "1", "-j", &chain])?;
        let netem_supported = run_cmd(
            "tc",
            &["qdisc", "add", "dev", "lo", "root", "handle", "1:", "prio"],
        )
        .is_ok()
            && run_cmd("tc", &["qdisc", "del", "dev", "lo", "root"]).is_ok()
            && run_cmd(
                "tc",
                &["qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
            )
            .is_ok()
            && run_cmd("tc", &["qdisc", "del", "dev", "lo", "root"]).is_ok();
        Ok(Net {
            chain,
            hosts,
            netem: false,
            netem_supported,
        })
    }

    /// Drops packets from node `from` to node `to`.
    pub fn cut(&self, from: usize, to: usize) -> Result<(), String> {
        run_cmd(
            "iptables",
            &[
                "-A",
                &self.chain,
                "-s",
                &self.hosts[from],
                "-d",
                &self.hosts[to],
                "-j",
                "DROP",
            ],
        )
    }

    /// Cuts every link between the two groups, both ways.
    pub fn cut_between(&self, a: &[usize], b: &[usize]) -> Result<(), String> {
        for &x in a {
            for &y in b {
                self.cut(x, y)?;
                self.cut(y, x)?;
            }
        }
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&self) -> Result<(), String> {
        run_cmd("iptables", &["-F", &self.chain])
    }

    /// A bad link to node `i`: 30 ms ± 20 ms of delay and 3% loss with
    /// netem, or 10% loss alone where the kernel has no netem.
    pub fn slow(&mut self, i: usize) -> Result<(), String> {
        if self.netem_supported {
            match self.netem_to(i) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    // E.g. another run holds lo's root qdisc: loss alone.
                    eprintln!("netem unavailable ({e}); packet loss instead");
                    let _ = self.clear_slow();
                }
            }
        }
        run_cmd(
            "iptables",
            &[
                "-A",
                &self.chain,
                "-d",
                &self.hosts[i],
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                "0.10",
                "-j",
                "DROP",
            ],
        )
    }

    fn netem_to(&mut self, i: usize) -> Result<(), String> {
        let dst = format!("{}/32", self.hosts[i]);
        // Four bands; the default priomap only uses the first three, so only
        // the filtered packets reach band 4 and its netem.
        let priomap = "1 2 2 2 1 2 0 0 1 1 1 1 1 1 1 1";
        let mut args = vec![
            "qdisc", "add", "dev", "lo", "root", "handle", "1:", "prio", "bands", "4", "priomap",
        ];
        args.extend(priomap.split(' '));
        run_cmd("tc", &args)?;
        self.netem = true;
        run_cmd(
            "tc",
            &[
                "qdisc", "add", "dev", "lo", "parent", "1:4", "handle", "40:", "netem", "delay",
                "30ms", "20ms", "loss", "3%",
            ],
        )?;
        run_cmd(
            "tc",
            &[
                "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                "match", "ip", "dst", &dst, "flowid", "1:4",
            ],
        )
    }

    pub fn clear_slow(&mut self) -> Result<(), String> {
        if std::mem::take(&mut self.netem) {
            run_cmd("tc", &["qdisc", "del", "dev", "lo", "root"])?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = self.clear_slow();
        let _ = self.heal();
        let _ = run_cmd("iptables", &["-D", "OUTPUT", "-j", &self.chain]);
        let _ = run_cmd("iptables", &["-X", &self.chain]);
    }
}

/// Whether the harness can inject network faults here (root, iptables, tc).
pub fn preflight() -> Result<(), String> {
    run_cmd("iptables", &["-L", "OUTPUT", "-n"])
        .map_err(|e| format!("iptables is needed (run as root; apt-get install iptables): {e}"))?;
    run_cmd("tc", &["qdisc", "show", "dev", "lo"])
        .map_err(|e| format!("tc is needed (apt-get install iproute2): {e}"))
}

/// Applies `fault`; returns a description.
pub(super) async fn inject(c: &mut Cluster, net: &mut Net, fault: &Fault) -> Result<(), String> {
    match fault {
        Fault::Isolate(i) => {
            let others: Vec<usize> = (0..c.nodes.len()).filter(|j| j != i).collect();
            net.cut_between(&[*i], &others)
        }
        Fault::Split(a, b) => net.cut_between(a, b),
        Fault::OneWay(a, b) => net.cut(*a, *b),
        Fault::Bridge { left, right, .. } => net.cut_between(left, right),
        Fault::KillApi(i) => {
            c.kill_api(*i);
            Ok(())
        }
        Fault::KillRedis(i) => {
            c.kill_redis(*i);
            Ok(())
        }
        Fault::KillWorker(i) => {
            c.kill_workers(*i);
            Ok(())
        }
        Fault::Pause(i) => {
            c.signal_api(*i, "STOP");
            Ok(())
        }
        Fault::Skew(i, offset) => {
            c.kill_api(*i);
            c.nodes[*i].env = vec![("KV_CLOCK_OFFSET_MS".to_owned(), offset.to_string())];
            c.restart_api(*i).await;
            Ok(())
        }
        Fault::Netem(i) => net.slow(*i),
        Fault::Move(i) => super::moves::leave(c, *i).await,
    }
}

/// Undoes `fault`.
pub(super) async fn undo(c: &mut Cluster, net: &mut Net, fault: &Fault) -> Result<(), String> {
    match fault {
        Fault::Isolate(_) | Fault::Split(..) | Fault::OneWay(..) | Fault::Bridge { .. } => {
            net.heal()
        }
        Fault::KillApi(i) => {
            c.restart_api(*i).await;
            Ok(())
        }
        Fault::KillRedis(i) => {
            c.start_redis(*i).await;
            Ok(())
        }
        Fault::KillWorker(i) => {
            c.restart_workers(*i);
            Ok(())
        }
        Fault::Pause(i) => {
            c.signal_api(*i, "CONT");
            Ok(())
        }
        Fault::Skew(i, _) => {
            c.kill_api(*i);
            c.nodes[*i].env.clear();
            c.restart_api(*i).await;
            Ok(())
        }
        Fault::Netem(_) => net.clear_slow().and_then(|()| net.heal()),
        Fault::Move(i) => super::moves::join_again(c, *i).await,
    }
}

pub(super) fn describe(fault: &Fault, net: &Net) -> String {
    let n = |i: &usize| format!("node{}", i + 1);
    let group = |g: &[usize]| g.iter().map(n).collect::<Vec<_>>().join("+");
    match fault {
        Fault::Isolate(i) => format!("partition: {} isolated", n(i)),
        Fault::Split(a, b) => format!("partition: {} | {}", group(a), group(b)),
        Fault::OneWay(a, b) => format!("partition: one-way {} -> {} dropped", n(a), n(b)),
        Fault::Bridge {
            bridge,
            left,
            right,
        } => format!(
            "partition: {} | {} bridged by {}",
            group(left),
            group(right),
            n(bridge)
        ),
        Fault::KillApi(i) => format!("SIGKILL {} api", n(i)),
        Fault::KillRedis(i) => format!("SIGKILL {} redis", n(i)),
        Fault::KillWorker(i) => format!("SIGKILL {} worker", n(i)),
        Fault::Pause(i) => format!("SIGSTOP {} api", n(i)),
        Fault::Skew(i, o) if o.unsigned_abs() > CLOCK_DRIFT_MS_MAX => format!(
            "clock of {} shifted {o:+} ms (beyond the {CLOCK_DRIFT_MS_MAX} ms drift bound)",
            n(i)
        ),
        Fault::Skew(i, o) => format!("clock of {} shifted {o:+} ms", n(i)),
        Fault::Move(i) => format!("{} leaves the cluster, then joins again", n(i)),
        Fault::Netem(i) if net.netem_supported => format!("netem 30±20 ms, 3% loss to {}", n(i)),
        Fault::Netem(i) => format!("10% packet loss to {} (no netem in this kernel)", n(i)),
    }
}
