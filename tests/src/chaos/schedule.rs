//! The seeded fault schedule: a small deterministic generator, the run's
//! settings, and the faults and steps the seed draws.

use std::time::Duration;

/// A small deterministic generator (xorshift*), so a seed replays a run.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // SplitMix64 spreads nearby seeds apart; `| 1` avoids xorshift's
        // fixed point at zero.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn range_ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
    /// `k` distinct indices below `n`, in random order.
    pub fn pick(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            all.swap(i, self.below(i as u64 + 1) as usize);
        }
        all.truncate(k);
        all
    }
}

/// What a chaos run does.
#[derive(Clone, Debug)]
pub struct Settings {
    pub seed: u64,
    /// How long faults are injected (clients run during it).
    pub duration: Duration,
    pub nodes: usize,
    pub clients: usize,
    /// Hot keys (`h0`, `h1`, ...): most operations contend on these.
    pub hot_keys: usize,
    /// Percent of operations on a hot key; the rest pick from `keys`.
    pub hot_percent: u64,
    /// Size of the large key space (`k0`, `k1`, ...): most of its keys see
    /// one operation or none, so each acknowledged write stands alone.
    pub keys: usize,
    /// Third octet of the nodes' addresses; runs at the same time need different ones.
    pub subnet: u8,
    /// Writes made with one node down (the availability figure).
    pub availability_writes: usize,
    /// Keys written before a node is wiped and restored (0 skips that phase).
    pub restore_keys: usize,
    /// `KV_BACKGROUND_SYNC`: replication through workers (on) or inline (off).
    pub background_sync: bool,
    /// Membership moves between the faults (`KV_CHAOS_MOVES=1`): a node
    /// leaves and joins again every third step.
    pub moves: bool,
    /// TLS everywhere (`KV_CHAOS_TLS=1`): HTTPS, mutual TLS between nodes,
    /// `rediss://` (see `Options::tls`).
    pub tls: bool,
}

impl Settings {
    pub fn new(seed: u64, duration: Duration) -> Settings {
        Settings {
            seed,
            duration,
            nodes: 5,
            clients: 5,
            hot_keys: 3,
            hot_percent: 70,
            keys: 5_000,
            subnet: 77,
            availability_writes: 200,
            restore_keys: 0,
            background_sync: true,
            moves: false,
            tls: false,
        }
    }
}

/// `KV_CLOCK_DRIFT_MS_MAX` of the chaos runs (the store's default): a node
/// further than this from most of its peers must be fenced.
pub const CLOCK_DRIFT_MS_MAX: u64 = 60_000;

/// The clock offsets a skew fault draws from: within [`CLOCK_DRIFT_MS_MAX`]
/// and far beyond it.
pub const SKEW_OFFSETS_MS: [i64; 4] = [2_000, -2_000, 600_000, -600_000];

/// One injected fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Node `0` cannot reach or be reached by any other node.
    Isolate(usize),
    /// The two groups cannot reach each other.
    Split(Vec<usize>, Vec<usize>),
    /// Packets from the first node to the second are dropped (one direction).
    OneWay(usize, usize),
    /// Two halves that cannot reach each other, both reaching the bridge node.
    Bridge {
        bridge: usize,
        left: Vec<usize>,
        right: Vec<usize>,
    },
    KillApi(usize),
    KillRedis(usize),
    KillWorker(usize),
    /// SIGSTOP of the API, SIGCONT when undone.
    Pause(usize),
    /// The API restarts with its clock shifted by this many ms.
    Skew(usize, i64),
    /// Latency and loss on packets to the node.
    Netem(usize),
    /// A membership move: the node leaves the cluster (its data moves to
    /// the others), and joins again once the leave is done (its share
    /// moves back). Only in runs that ask for moves (`Settings::moves`).
    Move(usize),
}

/// One step of the schedule: one fault, or two at once (the second a
/// process fault on another node), how long they hold, the quiet gap after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub faults: Vec<Fault>,
    pub hold: Duration,
    pub gap: Duration,
}

/// The fault schedule for `seed`: steps until `duration` is used up.
/// Pure, so the same seed always gives the same schedule.
pub fn schedule(seed: u64, duration: Duration, nodes: usize) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    let mut steps = Vec::new();
    let mut used = Duration::ZERO;
    loop {
        let fault = match rng.below(10) {
            0 => Fault::Isolate(rng.below(nodes as u64) as usize),
            1 => {
                let order = rng.pick(nodes, nodes);
                let (a, b) = order.split_at(nodes / 2);
                Fault::Split(a.to_vec(), b.to_vec())
            }
            2 => {
                let p = rng.pick(nodes, 2);
                Fault::OneWay(p[0], p[1])
            }
            3 => {
                let order = rng.pick(nodes, nodes);
                let rest = &order[1..];
                let (left, right) = rest.split_at(rest.len() / 2);
                Fault::Bridge {
                    bridge: order[0],
                    left: left.to_vec(),
                    right: right.to_vec(),
                }
            }
            4 => Fault::KillApi(rng.below(nodes as u64) as usize),
            5 => Fault::KillRedis(rng.below(nodes as u64) as usize),
            6 => Fault::KillWorker(rng.below(nodes as u64) as usize),
            7 => Fault::Pause(rng.below(nodes as u64) as usize),
            8 => {
                // Within the drift bound (60 s), and ten minutes beyond it
                // either way: a node that far off must be fenced.
                let offset = SKEW_OFFSETS_MS[rng.below(SKEW_OFFSETS_MS.len() as u64) as usize];
                Fault::Skew(rng.below(nodes as u64) as usize, offset)
            }
            _ => Fault::Netem(rng.below(nodes as u64) as usize),
        };
        let mut faults = vec![fault];
        if rng.below(4) == 0 {
            // A second fault at the same time: a process fault on a node the
            // first one does not already single out.
            let busy = single_node(&faults[0]);
            let node = (0..nodes)
                .cycle()
                .skip(rng.below(nodes as u64) as usize)
                .take(nodes)
                .find(|n| Some(*n) != busy)
                .unwrap_or(0);
            faults.push(match rng.below(3) {
                0 => Fault::KillApi(node),
                1 => Fault::KillRedis(node),
                _ => Fault::Pause(node),
            });
        }
        let step = Step {
            faults,
            hold: rng.range_ms(3000, 8000),
            gap: rng.range_ms(500, 2000),
        };
        used += step.hold + step.gap;
        steps.push(step);
        if used >= duration {
            return steps;
        }
    }
}

/// `steps` with a membership move, alone, after every `every`-th step, on
/// a node drawn by a generator of its own: the other steps stay the seed's.
pub fn with_moves(steps: Vec<Step>, seed: u64, nodes: usize, every: usize) -> Vec<Step> {
    let mut rng = Rng::new(seed ^ 0x6d6f_7665);
    let mut out = Vec::with_capacity(steps.len() + steps.len() / every.max(1));
    for (i, step) in steps.into_iter().enumerate() {
        out.push(step);
        if (i + 1) % every.max(1) == 0 {
            out.push(Step {
                faults: vec![Fault::Move(rng.below(nodes as u64) as usize)],
                hold: rng.range_ms(1000, 3000),
                gap: rng.range_ms(500, 2000),
            });
        }
    }
    out
}

/// The node a fault acts on, for faults that act on one node.
pub(super) fn single_node(fault: &Fault) -> Option<usize> {
    match fault {
        Fault::KillApi(i)
        | Fault::KillRedis(i)
        | Fault::KillWorker(i)
        | Fault::Pause(i)
        | Fault::Skew(i, _)
        | Fault::Netem(i)
        | Fault::Move(i) => Some(*i),
        Fault::Isolate(_) | Fault::Split(..) | Fault::OneWay(..) | Fault::Bridge { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long_schedule() -> Vec<Step> {
        schedule(7, Duration::from_secs(600), 5)
    }

    #[test]
    fn moves_come_between_the_seeds_steps_and_change_none_of_them() {
        let base = schedule(7, Duration::from_secs(120), 5);
        let moved = with_moves(base.clone(), 7, 5, 3);
        let (moves, rest): (Vec<&Step>, Vec<&Step>) = moved
            .iter()
            .partition(|s| matches!(s.faults.as_slice(), [Fault::Move(_)]));
        assert_eq!(rest.into_iter().cloned().collect::<Vec<_>>(), base);
        assert_eq!(moves.len(), base.len() / 3);
        for (i, step) in moved.iter().enumerate() {
            // Every fourth step of the result is a move, alone.
            let is_move = matches!(step.faults.as_slice(), [Fault::Move(n)] if *n < 5);
            assert_eq!(is_move, (i + 1) % 4 == 0, "step {i}: {step:?}");
        }
        assert_eq!(moved, with_moves(base, 7, 5, 3), "same seed, same moves");
    }

    #[test]
    fn same_seed_same_schedule() {
        let a = schedule(7, Duration::from_secs(60), 5);
        assert_eq!(a, schedule(7, Duration::from_secs(60), 5));
        // Neighbouring seeds give different schedules.
        for seed in [2, 3, 6, 8] {
            assert_ne!(a, schedule(seed, Duration::from_secs(60), 5), "seed {seed}");
        }
        assert_ne!(
            schedule(2, Duration::from_secs(60), 5),
            schedule(3, Duration::from_secs(60), 5)
        );
        // Over a long schedule, skews both within and beyond the bound.
        let skews: Vec<i64> = long_schedule()
            .iter()
            .flat_map(|s| &s.faults)
            .filter_map(|f| match f {
                Fault::Skew(_, o) => Some(*o),
                _ => None,
            })
            .collect();
        for offset in SKEW_OFFSETS_MS {
            assert!(skews.contains(&offset), "{offset} in {skews:?}");
        }
        let total: Duration = a.iter().map(|s| s.hold + s.gap).sum();
        assert!(total >= Duration::from_secs(60));
        // Some steps hold two faults, never two on the same node.
        let long = long_schedule();
        assert!(long.iter().any(|s| s.faults.len() == 2));
        for step in &long {
            if let [a, b] = step.faults.as_slice() {
                assert!(
                    single_node(a).is_none() || single_node(a) != single_node(b),
                    "{step:?}"
                );
            }
        }
    }
}
