//! The model test's invariants, checked after every step: service order, counts against the
//! model, caps, gauges, idle connections, the global starved queue, and no lost wake-up.

use tokio::time::Instant;

use super::ops::{MODEL_CAPS, MODEL_GLOBAL, MODEL_NAMES, MODEL_WARM};
use super::*;
use crate::ratelimit::Class;

impl Model {
    /// Class, then arrival, per pool, with the anti-starvation rule: a request is served
    /// before an older waiter of its pool only when that waiter's class is lower; and before
    /// a waiter of a higher class only when it is the oldest of its pool and the
    /// `FAIR_EVERY - 1` grants before it all passed over an older waiter.
    pub(super) fn check_order(&mut self, ctx: &str, served: &[(u64, usize, Class)]) {
        use crate::ratelimit::class::FAIR_EVERY;
        for &(seq, pool, class) in served {
            let same_pool = || self.waiting.iter().filter(move |(_, r)| r.pool == pool);
            if let Some((older, _)) = same_pool().find(|(s, r)| **s < seq && r.class <= class) {
                panic!(
                    "{ctx}: request {seq} ({class:?}) of pool {pool} was served before older {older}"
                );
            }
            let passes_over = same_pool().any(|(s, _)| *s < seq);
            if let Some((higher, r)) = same_pool().find(|(_, r)| r.class < class) {
                assert!(
                    !passes_over && self.passed_over[pool] + 1 >= FAIR_EVERY,
                    "{ctx}: request {seq} ({class:?}) of pool {pool} was served before {higher} ({:?}) after {} grants that passed over an older waiter",
                    r.class,
                    self.passed_over[pool]
                );
            }
            self.passed_over[pool] = if passes_over {
                self.passed_over[pool] + 1
            } else {
                0
            };
        }
    }

    /// Every invariant, after every step. The gauges are compared with the rendered metrics
    /// when `render` is set (rendering is the slow part of a step).
    pub(super) fn check(&self, ctx: &str, render: bool) {
        let now = Instant::now();
        // No connection is carried by two requests at once.
        let mut held: Vec<(usize, u64)> = self.active.iter().map(|(i, p)| (*i, p.id())).collect();
        held.sort_unstable();
        let before = held.len();
        held.dedup();
        assert_eq!(held.len(), before, "{ctx}: one connection handed out twice");
        // No wait outlives its deadline (queue_timeout when it has none).
        for (seq, request) in &self.waiting {
            assert!(
                now - request.since < request.patience,
                "{ctx}: request {seq} still waits after {:?}",
                now - request.since
            );
        }
        let text = if render {
            self.metrics.render()
        } else {
            String::new()
        };
        let mut open_sum = 0;
        let mut states = Vec::new();
        for (index, pool) in self.set.pools().iter().enumerate() {
            let name = MODEL_NAMES[index];
            let state = pool.lock();
            let c = state.counts();
            let ctx = format!("{ctx} pool {name}: {c:?}");
            let active = self.active.iter().filter(|(i, _)| *i == index).count()
                + self.probes.iter().filter(|(i, _)| *i == index).count();
            let warming = self.warming.iter().filter(|(i, _)| *i == index).count();
            let connecting = self.connecting.iter().filter(|(i, _)| *i == index).count() + warming;
            assert_eq!(
                state.warming(),
                warming,
                "{ctx}: warming differs from the model"
            );
            // The floor never holds more than it needs: what is idle, being opened for it
            // or probed stays within the floor plus one refresh in flight per stale one.
            assert!(
                warming <= MODEL_WARM[index],
                "{ctx}: {warming} warm slots for a floor of {}",
                MODEL_WARM[index]
            );
            let waiting = self.waiting.values().filter(|r| r.pool == index).count();
            assert_eq!(
                (c.active, c.connecting, c.waiting),
                (active, connecting, waiting),
                "{ctx}: (active, connecting, waiting) differ from the model"
            );
            let open = c.active + c.idle + c.connecting;
            assert!(open <= MODEL_CAPS[index], "{ctx}: over its cap");
            open_sum += open;
            assert!(
                c.waiting == 0 || c.idle == 0,
                "{ctx}: requests wait while connections idle"
            );
            // Idle connections are this pool's, distinct, not in use, and not known dead.
            let mut ids: Vec<u64> = state.idle().iter().map(|idle| idle.id).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), c.idle, "{ctx}: a connection is idle twice");
            for id in ids {
                let conn = self.conns.iter().find(|m| m.id == id && m.pool == index);
                let conn = conn.unwrap_or_else(|| panic!("{ctx}: unknown idle connection {id}"));
                assert!(
                    !conn.noticed,
                    "{ctx}: connection {id} was lost but stays idle"
                );
                assert!(
                    !self.active.iter().any(|(i, p)| *i == index && p.id() == id),
                    "{ctx}: connection {id} is idle and active"
                );
            }
            let gauges = [
                ("http_pool_connections_active", c.active),
                ("http_pool_connections_idle", c.idle),
                ("http_pool_connections_connecting", c.connecting),
                ("http_pool_requests_waiting", c.waiting),
            ];
            for (gauge, value) in gauges {
                let line = format!("{gauge}{{upstream=\"{name}\"}} {value}\n");
                assert!(
                    !render || text.contains(&line),
                    "{ctx}: gauge {gauge} is not {value}\n{text}"
                );
            }
            let starved: Vec<u64> = state
                .waiters()
                .filter(|w| w.starved)
                .map(|w| w.id)
                .collect();
            states.push((c, starved));
        }
        assert!(open_sum <= MODEL_GLOBAL, "{ctx}: over the global cap");
        assert_eq!(
            self.set.open_total(),
            open_sum,
            "{ctx}: the global count drifted from the pools' counts"
        );
        // The global queue of starved waiters lists exactly the waiters marked starved.
        let (mut listed, listed_len) = self.set.global().starved_now();
        assert_eq!(listed_len, listed.len(), "{ctx}: starved_len drifted");
        let mut marked: Vec<(usize, u64)> = states
            .iter()
            .enumerate()
            .flat_map(|(index, (_, ids))| ids.iter().map(move |id| (index, *id)))
            .collect();
        listed.sort_unstable();
        marked.sort_unstable();
        assert_eq!(listed, marked, "{ctx}: global starved queue out of step");
        // No lost wake-up: a pool with waiters is at its own cap, or the global cap is reached
        // and no other pool has an idle connection to give up.
        for (index, (c, _)) in states.iter().enumerate() {
            if c.waiting > 0 {
                let open = c.active + c.idle + c.connecting;
                let others_idle: usize = states
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != index)
                    .map(|(_, (other, _))| other.idle)
                    .sum();
                assert!(
                    open == MODEL_CAPS[index] || (open_sum == MODEL_GLOBAL && others_idle == 0),
                    "{ctx}: pool {index} has waiters it could serve: {c:?}, open total {open_sum}"
                );
            }
        }
    }
}
