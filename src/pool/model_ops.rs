//! The model test's operations: what can happen to the pools, and the proptest strategy
//! that generates sequences of them.

use std::time::Duration;

use crate::ratelimit::Class;

/// Caps of the three pools in the model test, and the global cap they share.
pub(super) const MODEL_CAPS: [usize; 3] = [2, 3, 2];
pub(super) const MODEL_GLOBAL: usize = 4;
/// The warm floor of each pool (one without), and how long a warm connection stays idle before
/// it is refreshed or probed (short, so that sequences reach it).
pub(super) const MODEL_WARM: [usize; 3] = [1, 0, 2];
pub(super) const MODEL_WARM_REFRESH: Duration = Duration::from_secs(4);
pub(super) const MODEL_NAMES: [&str; 3] = ["a", "b", "c"];
/// The longest operation sequence one case runs.
pub(super) const MODEL_MAX_OPS: usize = 150;

/// One thing that happens to the pools. Indices (`pick`, `conn`) select among what exists at
/// that moment (modulo its count), so any sequence is valid and shrinking keeps it so; an
/// operation with nothing to act on does nothing.
#[derive(Clone, Debug)]
pub(super) enum Op {
    /// A request of `class` asks `pool` for a connection (`fresh`: a re-send, which needs a
    /// new one), waiting at most `deadline` ms (`None`: queue_timeout). It runs as its own
    /// task: served at once, or queued.
    Checkout {
        pool: usize,
        fresh: bool,
        class: Class,
        deadline: Option<u64>,
    },
    /// A connection being opened is established and carries its request (active).
    Connected { pick: usize },
    /// A connection being opened is abandoned: the connect failed, or the client left
    /// while it was connecting (both drop the `Connecting` guard).
    ConnectAbandoned { pick: usize },
    /// A request completes and its connection is released for reuse.
    Release { pick: usize },
    /// A request ends without a reusable connection: an error, a response not read to the
    /// end, or the client leaving mid-request (all drop the `Pooled` guard).
    Close { pick: usize },
    /// A queued client goes away (its checkout task is cancelled).
    CancelWaiter { pick: usize },
    /// The upstream closes a connection, idle or busy, behind the pool's back. With
    /// `noticed`, its connection task ends and reports it (`Pool::connection_lost`).
    UpstreamClosed { conn: usize, noticed: bool },
    /// Time passes: queue timeouts fire, and the reaper runs.
    Advance { millis: u64 },
    /// The warm task asks `pool` for a slot to open a floor connection in.
    WarmSlot { pool: usize },
    /// The warm task asks `pool` for a slot to replace a stale floor connection.
    RefreshSlot { pool: usize },
    /// A warm or refresh connection opens (it goes to idle, or to a waiting request).
    WarmConnected { pick: usize },
    /// A warm or refresh connect fails (its `Connecting` guard drops).
    WarmAbandoned { pick: usize },
    /// The warm task takes a stale floor connection of `pool` out for a probe.
    ProbeCheckout { pool: usize },
    /// A probe ends: answered (`ok`, the connection goes back to idle) or failed (closed).
    ProbeDone { pick: usize, ok: bool },
    /// `prewarm`: the floor of `pool` applies before any request.
    Arm { pool: usize },
}

pub(super) fn model_op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        6 => (
            0..MODEL_CAPS.len(),
            prop::bool::weighted(0.125),
            prop_oneof![Just(Class::High), Just(Class::Normal), Just(Class::Low)],
            prop::option::weighted(0.25, 0..4000u64),
        )
            .prop_map(|(pool, fresh, class, deadline)| Op::Checkout {
                pool,
                fresh,
                class,
                deadline
            }),
        3 => (0..16usize).prop_map(|pick| Op::Connected { pick }),
        1 => (0..16usize).prop_map(|pick| Op::ConnectAbandoned { pick }),
        4 => (0..16usize).prop_map(|pick| Op::Release { pick }),
        2 => (0..16usize).prop_map(|pick| Op::Close { pick }),
        2 => (0..16usize).prop_map(|pick| Op::CancelWaiter { pick }),
        1 => (0..64usize, any::<bool>())
            .prop_map(|(conn, noticed)| Op::UpstreamClosed { conn, noticed }),
        2 => (0..3000u64).prop_map(|millis| Op::Advance { millis }),
        2 => (0..MODEL_CAPS.len()).prop_map(|pool| Op::WarmSlot { pool }),
        1 => (0..MODEL_CAPS.len()).prop_map(|pool| Op::RefreshSlot { pool }),
        2 => (0..16usize).prop_map(|pick| Op::WarmConnected { pick }),
        1 => (0..16usize).prop_map(|pick| Op::WarmAbandoned { pick }),
        1 => (0..MODEL_CAPS.len()).prop_map(|pool| Op::ProbeCheckout { pool }),
        1 => (0..16usize, any::<bool>()).prop_map(|(pick, ok)| Op::ProbeDone { pick, ok }),
        1 => (0..MODEL_CAPS.len()).prop_map(|pool| Op::Arm { pool }),
    ]
}
