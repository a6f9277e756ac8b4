//! Guard tests with an injected wall clock and explicit instants.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, Method};
use tokio::time::Instant;

use super::*;

struct Rig {
    wall: Arc<AtomicU64>,
    store: Arc<MemoryStore>,
    guard: UpstreamGuard<MemoryStore>,
}

fn rig(profile: &str, host: &str, budget: Option<Budget>) -> Rig {
    // Mid-minute, so the minute window is known.
    let wall = Arc::new(AtomicU64::new(1_699_999_990_000));
    let w = wall.clone();
    let clock: WallClock = Arc::new(move || w.load(Ordering::SeqCst));
    let store = Arc::new(MemoryStore::new(clock.clone()));
    let p = profile_for(profile, host).unwrap();
    let guard = UpstreamGuard::new(
        format!("default/{host}"),
        p,
        host,
        budget,
        store.clone(),
        clock,
    );
    Rig { wall, store, guard }
}

fn get(path: &'static str) -> RequestFacts<'static> {
    RequestFacts {
        method: &Method::GET,
        path,
        query: None,
        body: None,
    }
}

#[tokio::test]
async fn cooldown_refuses_short_deadlines_and_lets_long_ones_wait() {
    let r = rig("generic", "example.org", None);
    let now = Instant::now();
    let ticket = match r
        .guard
        .admit(
            &get("/a"),
            r.guard.assess(&get("/a")).weight,
            Class::Normal,
            now,
            now,
        )
        .await
    {
        Decision::Go(t) => t,
        other => panic!("{other:?}"),
    };
    let mut h = HeaderMap::new();
    h.insert("retry-after", "3".parse().unwrap());
    let started = r.guard.observe(
        &get("/a"),
        ticket,
        &ResponseFacts {
            status: 429,
            headers: &h,
            body: None,
        },
    );
    assert_eq!(
        started,
        vec![Started {
            upstream_wide: true,
            cause: Cause::TooManyRequests,
            duration: Duration::from_secs(3)
        }]
    );
    assert_eq!(
        r.store.cooldown_left("default/example.org"),
        Duration::from_secs(3)
    );

    let short = r
        .guard
        .admit(
            &get("/b"),
            r.guard.assess(&get("/b")).weight,
            Class::Normal,
            now,
            now + Duration::from_secs(1),
        )
        .await;
    assert_eq!(
        short,
        Decision::Refuse {
            retry_after: Duration::from_secs(3),
            reason: Reason::Cooldown
        }
    );
    assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    let long = r
        .guard
        .admit(
            &get("/b"),
            r.guard.assess(&get("/b")).weight,
            Class::Normal,
            now,
            now + Duration::from_secs(5),
        )
        .await;
    assert_eq!(
        long,
        Decision::Wait {
            until: now + Duration::from_secs(3),
            reason: Reason::Cooldown
        }
    );
    r.wall.fetch_add(3000, Ordering::SeqCst);
    assert!(matches!(
        r.guard
            .admit(
                &get("/b"),
                r.guard.assess(&get("/b")).weight,
                Class::Normal,
                now,
                now
            )
            .await,
        Decision::Go(_)
    ));
}

#[tokio::test]
async fn binance_budget_fills_its_minute_and_is_corrected_upward() {
    let r = rig(
        "binance",
        "api.binance.com",
        Some(parse_budget("100/1m").unwrap()),
    );
    let now = Instant::now();
    let far = now + Duration::from_secs(60);
    // Effective limit 95: 19 depth requests of weight 5.
    let mut last = None;
    for _ in 0..19 {
        match r
            .guard
            .admit(
                &get("/api/v3/depth"),
                r.guard.assess(&get("/api/v3/depth")).weight,
                Class::High,
                now,
                far,
            )
            .await
        {
            Decision::Go(t) => last = Some(t),
            other => panic!("{other:?}"),
        }
    }
    // The window (started at :00, now :10) ends in 50 s.
    assert_eq!(
        r.guard
            .admit(
                &get("/api/v3/depth"),
                r.guard.assess(&get("/api/v3/depth")).weight,
                Class::Normal,
                now,
                now
            )
            .await,
        Decision::Refuse {
            retry_after: Duration::from_secs(50),
            reason: Reason::Budget
        }
    );
    assert_eq!(r.store.used("default/api.binance.com", 60_000), 95);
    // Another client on the IP: the exchange counts more; the count follows it up, not down.
    let mut h = HeaderMap::new();
    h.insert("x-mbx-used-weight-1m", "99".parse().unwrap());
    r.guard.observe(
        &get("/api/v3/depth"),
        last.unwrap(),
        &ResponseFacts {
            status: 200,
            headers: &h,
            body: None,
        },
    );
    assert_eq!(r.store.used("default/api.binance.com", 60_000), 99);
    h.insert("x-mbx-used-weight-1m", "3".parse().unwrap());
    r.guard.observe(
        &get("/api/v3/depth"),
        last.unwrap(),
        &ResponseFacts {
            status: 200,
            headers: &h,
            body: None,
        },
    );
    assert_eq!(r.store.used("default/api.binance.com", 60_000), 99);
    // A new minute starts empty, and a stale header from the old one changes nothing.
    r.wall.fetch_add(50_000, Ordering::SeqCst);
    let t = match r
        .guard
        .admit(
            &get("/api/v3/depth"),
            r.guard.assess(&get("/api/v3/depth")).weight,
            Class::Normal,
            now,
            now,
        )
        .await
    {
        Decision::Go(t) => t,
        other => panic!("{other:?}"),
    };
    h.insert("x-mbx-used-weight-1m", "90".parse().unwrap());
    r.guard.observe(
        &get("/api/v3/depth"),
        last.unwrap(),
        &ResponseFacts {
            status: 200,
            headers: &h,
            body: None,
        },
    );
    assert_eq!(r.store.used("default/api.binance.com", 60_000), 5);
    assert_ne!(t, last.unwrap());
}

#[tokio::test]
async fn bybit_hold_stops_one_endpoint_only() {
    let r = rig("auto", "api.bybit.com", None);
    let now = Instant::now();
    let order = RequestFacts {
        method: &Method::POST,
        path: "/v5/order/create",
        query: None,
        body: None,
    };
    let Decision::Go(t) = r
        .guard
        .admit(
            &order,
            r.guard.assess(&order).weight,
            Class::Normal,
            now,
            now,
        )
        .await
    else {
        panic!()
    };
    let mut h = HeaderMap::new();
    let reset = (r.wall.load(Ordering::SeqCst) + 800).to_string();
    h.insert("x-bapi-limit-reset-timestamp", reset.parse().unwrap());
    let body = br#"{"retCode":10006,"retMsg":"Too many visits!"}"#;
    let started = r.guard.observe(
        &order,
        t,
        &ResponseFacts {
            status: 200,
            headers: &h,
            body: Some(body),
        },
    );
    assert_eq!(started.len(), 1);
    assert!(!started[0].upstream_wide);
    assert_eq!(
        r.guard
            .admit(
                &order,
                r.guard.assess(&order).weight,
                Class::Normal,
                now,
                now
            )
            .await,
        Decision::Refuse {
            retry_after: Duration::from_millis(800),
            reason: Reason::Hold
        }
    );
    assert!(matches!(
        r.guard
            .admit(
                &get("/v5/market/time"),
                r.guard.assess(&get("/v5/market/time")).weight,
                Class::Normal,
                now,
                now
            )
            .await,
        Decision::Go(_)
    ));
}

#[tokio::test]
async fn none_never_stops() {
    let r = rig("none", "api.binance.com", None);
    let now = Instant::now();
    let mut h = HeaderMap::new();
    h.insert("retry-after", "60".parse().unwrap());
    let t = Ticket { window: None };
    assert!(
        r.guard
            .observe(
                &get("/x"),
                t,
                &ResponseFacts {
                    status: 429,
                    headers: &h,
                    body: None
                }
            )
            .is_empty()
    );
    assert_eq!(
        r.guard
            .admit(
                &get("/x"),
                r.guard.assess(&get("/x")).weight,
                Class::Normal,
                now,
                now
            )
            .await,
        Decision::Go(t)
    );
}

#[tokio::test]
async fn the_quiet_fast_path_ends_with_a_cooldown_and_returns_after_it() {
    let r = rig("generic", "example.org", None);
    assert!(r.store.quiet(), "nothing recorded yet");
    let now = Instant::now();
    let facts = get("/a");
    let Decision::Go(ticket) = r.guard.admit(&facts, 1, Class::Normal, now, now).await else {
        panic!()
    };
    let mut h = HeaderMap::new();
    h.insert("retry-after", "2".parse().unwrap());
    let response = ResponseFacts {
        status: 429,
        headers: &h,
        body: None,
    };
    r.guard.observe(&facts, ticket, &response);
    assert!(!r.store.quiet(), "a cooldown is in force");
    assert!(matches!(
        r.guard.admit_now(&facts, 1, Class::Normal, now, now),
        Some(Decision::Refuse { .. })
    ));
    assert!(r.guard.blocked(&facts).is_some());
    r.wall.fetch_add(2_000, Ordering::SeqCst);
    assert!(r.store.quiet(), "the cooldown is over");
    assert!(matches!(
        r.guard.admit_now(&facts, 1, Class::Normal, now, now),
        Some(Decision::Go(_))
    ));
}
