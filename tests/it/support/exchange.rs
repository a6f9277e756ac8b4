//! A fake exchange that limits like the real ones: weight counted per fixed window (aligned
//! to the epoch, as Binance counts minutes), the used weight in `X-MBX-USED-WEIGHT-1M` on every
//! answer, 429 with `Retry-After` once a window is over its limit, and 418 with Binance's
//! "banned until" body for a client that keeps sending during a `Retry-After`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::upstream::{Received, Reply, TestUpstream};

/// How the fake exchange limits.
#[derive(Clone, Copy)]
pub struct Limits {
    /// Weight allowed per window.
    pub limit: u64,
    /// Window length in milliseconds.
    pub window_ms: u64,
    /// `Retry-After` seconds on a 429.
    pub retry_after_secs: u64,
    /// Requests tolerated during a `Retry-After` (in flight when the 429 left) before a ban.
    pub grace: usize,
    /// A request's weight.
    pub weight: fn(&Received) -> u64,
}

/// What the exchange answered, in order.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub ok: usize,
    pub too_many: usize,
    pub banned: usize,
    /// Weight served per window index (429s and 418s count nothing).
    pub per_window: Vec<(u64, u64)>,
}

#[derive(Default)]
struct State {
    tally: Tally,
    window: u64,
    used: u64,
    /// Wall-clock ms until which a `Retry-After` runs, and requests received during it.
    retry_until: u64,
    during_retry: usize,
    banned_until: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The fake exchange, on a [`TestUpstream`].
pub struct FakeExchange {
    pub upstream: TestUpstream,
    state: Arc<Mutex<State>>,
}

impl FakeExchange {
    pub async fn start(limits: Limits) -> FakeExchange {
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        let upstream = TestUpstream::builder()
            .handler(move |r| answer(&mut s.lock().unwrap(), &limits, r))
            .start()
            .await;
        FakeExchange { upstream, state }
    }

    /// What it answered so far.
    pub fn tally(&self) -> Tally {
        self.state.lock().unwrap().tally.clone()
    }
}

fn answer(s: &mut State, limits: &Limits, r: &Received) -> Reply {
    let now = now_ms();
    if now < s.banned_until {
        s.tally.banned += 1;
        return banned(s.banned_until, now);
    }
    if now < s.retry_until {
        s.during_retry += 1;
        if s.during_retry > limits.grace {
            // Kept going after being told to wait: banned, as Binance does.
            s.banned_until = now + 120_000;
            s.tally.banned += 1;
            return banned(s.banned_until, now);
        }
        s.tally.too_many += 1;
        let left = (s.retry_until - now).div_ceil(1000);
        return too_many(left);
    }
    let window = now / limits.window_ms;
    if window != s.window {
        s.window = window;
        s.used = 0;
    }
    let weight = (limits.weight)(r);
    if s.used + weight > limits.limit {
        s.retry_until = now + limits.retry_after_secs * 1000;
        s.during_retry = 0;
        s.tally.too_many += 1;
        return too_many(limits.retry_after_secs);
    }
    s.used += weight;
    s.tally.ok += 1;
    match s.tally.per_window.last_mut() {
        Some((w, used)) if *w == window => *used += weight,
        _ => s.tally.per_window.push((window, weight)),
    }
    Reply::json(200, "{}").header("x-mbx-used-weight-1m", &s.used.to_string())
}

fn too_many(secs: u64) -> Reply {
    Reply::json(
        429,
        r#"{"code":-1003,"msg":"Too many requests; please use the websocket for live updates."}"#,
    )
    .header("retry-after", &secs.to_string())
}

fn banned(until: u64, now: u64) -> Reply {
    Reply::json(
        418,
        format!(r#"{{"code":-1003,"msg":"Way too many requests; IP banned until {until}."}}"#),
    )
    .header(
        "retry-after",
        &Duration::from_millis(until - now).as_secs().to_string(),
    )
}
