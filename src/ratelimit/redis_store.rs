//! The shared store: budgets, cooldowns and holds on Redis, so every sidepool that uses the same
//! server and `[rate_limit] key` spends one budget and stops together.
//!
//! - **Decisions** are one Lua script each (`lua/decide.lua`), atomic on the server and timed by
//!   the server's clock. A decision that spends weight leases a slice of the window (a twentieth
//!   of the limit) to this sidecar, so the next requests of the window go without a round trip
//!   until the slice is spent; what a sidecar leased and did not spend is counted as used, which
//!   errs on the safe side.
//! - **Cooldowns and holds** are written with `lua/block.lua` (never shortening one in force) and
//!   published on the key's channel; every sidecar subscribes and applies them to its local view
//!   at once, and every decision script checks them again. A local view is what the request path
//!   reads, so a cooldown costs no round trip.
//! - **Outage**: a call that fails or takes longer than `[rate_limit] timeout` marks the store
//!   down (one warn line, gauge `http_pool_rate_limit_store_up` 0). While down, decisions are
//!   local: this sidecar's own budgets scaled by `fallback_share`, and the cooldowns it knows. A
//!   background ping every second brings it back by itself. No request waits on the store
//!   longer than the timeout, and only the one that found it down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt as _;
use metrics::Gauge;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use tokio::time::Instant;

use super::store::{Answer, Ask, MemoryStore, Record, Store, WallClock};

/// How often a store that is down is asked again, and how soon a lost subscription is renewed.
const RETRY: Duration = Duration::from_secs(1);

/// The weight leased per round trip: this share of the window's limit.
const LEASE_DIVISOR: u32 = 20;

/// `[rate_limit]` for a Redis store.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://HOST:PORT/DB` (may hold a password: never logged).
    pub url: String,
    /// `[rate_limit] key`: the namespace shared by sidecars that spend one budget.
    pub key: String,
    /// Longest wait for one store call before the store counts as down.
    pub timeout: Duration,
    /// The share of each budget this sidecar spends alone while the store is down.
    pub fallback_share: f64,
}

/// A slice of one window's budget leased to this sidecar.
struct Lease {
    window: u64,
    /// Weight left to spend without asking.
    left: u64,
    /// When the window ends (by the server's clock, read as a duration).
    ends: Instant,
    /// The shared count after the lease was granted (the budget-used gauge).
    used: u64,
}

/// The Redis store. Cheap to share; its background tasks hold it weakly.
pub struct RedisStore {
    local: MemoryStore,
    conn: ConnectionManager,
    decide: Script,
    block: Script,
    /// `sidepool:` + the guard's key (which starts with `[rate_limit] key`).
    prefix: &'static str,
    channel: String,
    timeout: Duration,
    share: f64,
    up: AtomicBool,
    up_gauge: Gauge,
    leases: Mutex<HashMap<String, Lease>>,
}

impl RedisStore {
    /// Opens the store lazily (nothing is connected until the first decision: sidepool starts
    /// and serves with Redis down) and starts its subscriber and its pinger.
    pub fn open(
        settings: &RedisSettings,
        clock: WallClock,
        up_gauge: Gauge,
    ) -> Result<Arc<RedisStore>, redis::RedisError> {
        let client = Client::open(settings.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(settings.timeout))
            .set_connection_timeout(Some(settings.timeout.max(Duration::from_millis(200))))
            .set_number_of_retries(1)
            .set_max_delay(RETRY);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        up_gauge.set(1.0);
        let store = Arc::new(RedisStore {
            local: MemoryStore::new(clock),
            conn,
            decide: Script::new(include_str!("lua/decide.lua")),
            block: Script::new(include_str!("lua/block.lua")),
            prefix: "sidepool:",
            channel: format!("sidepool:{}:events", settings.key),
            timeout: settings.timeout,
            share: settings.fallback_share,
            up: AtomicBool::new(true),
            up_gauge,
            leases: Mutex::new(HashMap::new()),
        });
        tokio::spawn(subscribe(Arc::downgrade(&store), client));
        tokio::spawn(ping(Arc::downgrade(&store)));
        Ok(store)
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn went_down(&self, why: &str) {
        if self.up.swap(false, Ordering::Relaxed) {
            self.up_gauge.set(0.0);
            self.leases_lock().clear();
            tracing::warn!(
                error = why,
                share = self.share,
                "rate-limit store unreachable: budgets and cooldowns are this sidecar's own until it is back (checked every second)"
            );
        }
    }

    fn came_back(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            self.up_gauge.set(1.0);
            tracing::info!("rate-limit store reachable again: budgets and cooldowns are shared");
        }
    }

    fn leases_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key(&self, upstream: &str, what: &str) -> String {
        format!("{}{upstream}:{what}", self.prefix)
    }

    /// The local answer: a block this sidecar knows of, no budget, the lease, or (store down)
    /// the fallback budget. `None`: the store must be asked.
    fn local_answer(&self, ask: Ask<'_>) -> Option<Answer> {
        if let Some(blocked) = self.local.blocked(ask.upstream, ask.endpoint) {
            return Some(blocked);
        }
        let Some((weight, window_ms, limit)) = ask.spend else {
            return Some(Answer::Go { window: None });
        };
        if !self.is_up() {
            let scaled = ((f64::from(limit) * self.share) as u32).max(1);
            let local = Ask {
                spend: Some((weight, window_ms, scaled)),
                ..ask
            };
            return self.local.decide_local(local);
        }
        let mut leases = self.leases_lock();
        let lease = leases.get_mut(ask.upstream)?;
        if Instant::now() < lease.ends && lease.left >= u64::from(weight) {
            lease.left -= u64::from(weight);
            return Some(Answer::Go {
                window: Some(lease.window),
            });
        }
        None
    }

    async fn ask_store(&self, ask: Ask<'_>) -> Answer {
        let (weight, window_ms, limit) = ask.spend.unwrap_or((0, 0, 0));
        let slice = (limit / LEASE_DIVISOR).max(weight);
        let mut invocation = self.decide.key(self.key(ask.upstream, "cooldown"));
        invocation
            .key(self.key(ask.upstream, &format!("hold:{}", ask.endpoint)))
            .key(self.key(ask.upstream, "w:"))
            .arg(weight)
            .arg(window_ms)
            .arg(limit)
            .arg(slice);
        let mut conn = self.conn.clone();
        let asked = Instant::now();
        let reply =
            tokio::time::timeout(self.timeout, invocation.invoke_async::<Vec<u64>>(&mut conn))
                .await;
        let reply = match reply {
            Ok(Ok(reply)) if reply.len() == 5 => reply,
            Ok(Ok(_)) => return self.fallback(ask, "unexpected reply to the decision script"),
            Ok(Err(err)) => return self.fallback(ask, &err.to_string()),
            Err(_) => return self.fallback(ask, "no answer within [rate_limit] timeout"),
        };
        let ms = Duration::from_millis(reply[1]);
        match reply[0] {
            0 => {
                let lease = Lease {
                    window: reply[2],
                    left: reply[3].saturating_sub(u64::from(weight)),
                    ends: asked + ms,
                    used: reply[4],
                };
                self.leases_lock().insert(ask.upstream.to_owned(), lease);
                Answer::Go {
                    window: Some(reply[2]),
                }
            }
            1 => {
                // Another sidecar's cooldown, seen before its message: keep it locally too.
                self.local.record(Record::Cooldown(ask.upstream, ms));
                Answer::Cooldown(ms)
            }
            2 => {
                self.local
                    .record(Record::Hold(ask.upstream, ask.endpoint, ms));
                Answer::Held(ms)
            }
            _ => {
                if let Some(lease) = self.leases_lock().get_mut(ask.upstream) {
                    lease.left = 0;
                    lease.used = reply[4];
                }
                Answer::Full(ms)
            }
        }
    }

    fn fallback(&self, ask: Ask<'_>, why: &str) -> Answer {
        self.went_down(why);
        self.local_answer(ask)
            .unwrap_or(Answer::Go { window: None })
    }

    /// Writes a block to the store and tells the other sidecars, in the background.
    fn publish(&self, key: String, duration: Duration, message: String) {
        if !self.is_up() {
            return;
        }
        let mut conn = self.conn.clone();
        let block = self.block.clone();
        let channel = self.channel.clone();
        let timeout = self.timeout;
        let ms = duration.as_millis().max(1) as u64;
        tokio::spawn(async move {
            let mut invocation = block.key(key);
            invocation.key(channel).arg(ms).arg(message);
            let _ = tokio::time::timeout(timeout, invocation.invoke_async::<i64>(&mut conn)).await;
        });
    }
}

impl Store for RedisStore {
    async fn decide(&self, ask: Ask<'_>) -> Answer {
        match self.local_answer(ask) {
            Some(answer) => answer,
            None => self.ask_store(ask).await,
        }
    }

    fn decide_local(&self, ask: Ask<'_>) -> Option<Answer> {
        self.local_answer(ask)
    }

    fn blocked(&self, upstream: &str, endpoint: &str) -> Option<Answer> {
        self.local.blocked(upstream, endpoint)
    }

    /// The local view: what this sidecar and the other sidecars' messages recorded. A block
    /// another sidecar wrote that this one has not heard of is found by the next decision
    /// that asks the store (one with a budget to spend).
    fn quiet(&self) -> bool {
        self.local.quiet()
    }

    fn cooldown_left(&self, upstream: &str) -> Duration {
        self.local.cooldown_left(upstream)
    }

    fn used(&self, upstream: &str, window_ms: u64) -> u64 {
        if !self.is_up() {
            return self.local.used(upstream, window_ms);
        }
        let leases = self.leases_lock();
        leases
            .get(upstream)
            .filter(|l| Instant::now() < l.ends)
            .map_or(0, |l| l.used.saturating_sub(l.left))
    }

    fn record(&self, change: Record<'_>) -> bool {
        let news = self.local.record(change);
        if news {
            match change {
                Record::Cooldown(up, d) => {
                    let message = format!("c\t{up}\t{}", d.as_millis());
                    self.publish(self.key(up, "cooldown"), d, message);
                }
                Record::Hold(up, endpoint, d) => {
                    let message = format!("h\t{up}\t{}\t{endpoint}", d.as_millis());
                    self.publish(self.key(up, &format!("hold:{endpoint}")), d, message);
                }
                // The exchange's own count corrects the local view only.
                Record::Used(..) => {}
            }
        }
        news
    }
}

/// Applies the blocks other sidecars publish, for as long as the store lives; a lost
/// subscription is renewed every [`RETRY`].
async fn subscribe(store: Weak<RedisStore>, client: Client) {
    loop {
        let Some(channel) = store.upgrade().map(|s| s.channel.clone()) else {
            return;
        };
        if let Ok(mut pubsub) = client.get_async_pubsub().await
            && pubsub.subscribe(&channel).await.is_ok()
        {
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                let Some(store) = store.upgrade() else {
                    return;
                };
                if let Ok(text) = msg.get_payload::<String>() {
                    apply_message(&store.local, &text);
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// `c<TAB>upstream<TAB>ms` or `h<TAB>upstream<TAB>ms<TAB>endpoint`.
fn apply_message(local: &MemoryStore, text: &str) {
    let mut parts = text.splitn(4, '\t');
    let (Some(kind), Some(upstream), Some(ms)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let Ok(ms) = ms.parse::<u64>() else {
        return;
    };
    let d = Duration::from_millis(ms);
    match (kind, parts.next()) {
        ("c", _) => {
            local.record(Record::Cooldown(upstream, d));
        }
        ("h", Some(endpoint)) => {
            local.record(Record::Hold(upstream, endpoint, d));
        }
        _ => {}
    }
}

/// While the store is down, asks it every [`RETRY`] whether it is back.
async fn ping(store: Weak<RedisStore>) {
    loop {
        tokio::time::sleep(RETRY).await;
        let Some(s) = store.upgrade() else {
            return;
        };
        if s.is_up() {
            continue;
        }
        let mut conn = s.conn.clone();
        let pong = tokio::time::timeout(
            s.timeout.max(Duration::from_millis(200)),
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await;
        if matches!(pong, Ok(Ok(_))) {
            s.came_back();
        }
    }
}
