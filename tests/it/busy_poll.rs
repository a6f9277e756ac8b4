use std::time::Duration;

use http::StatusCode;

use crate::support::eventually::eventually;
use crate::support::harness::{Process, config_toml, get, https, metric_value, send_fresh};
use crate::support::upstream::{Reply, TestUpstream};

/// The polling window. Long enough that the gauge is read well inside it on a loaded machine.
const WINDOW: &str = "1s";
/// A spinning thread gets far more CPU than this in one window even on a busy 2-core machine;
/// an idle sidepool gets far less in the quiet interval below.
const SPINNING_CPU: Duration = Duration::from_millis(50);
const QUIET: Duration = Duration::from_millis(400);
const IDLE_CPU: Duration = Duration::from_millis(40);

/// `runtime.busy_poll` on both runtimes: a request opens a polling window on every worker
/// (the gauge shows them, and the process really burns CPU meanwhile), the window closes on its
/// own, and afterwards sidepool sleeps (almost no CPU) until the next request.
#[tokio::test]
async fn busy_poll_keeps_every_worker_polling_for_the_window_then_sleeps() {
    for workers in ["1", "2"] {
        window_with_workers(workers).await;
    }
}

async fn window_with_workers(workers: &str) {
    let upstream = TestUpstream::builder()
        .handler(|_| Reply::json(200, "{\"ok\":true}"))
        .start()
        .await;
    let toml = config_toml("", &[https("ex", "exchange.test", upstream.port())])
        + &format!("[runtime]\nbusy_poll = \"{WINDOW}\"\n");
    let sidepool = Process::start(
        &format!("busy-poll-{workers}"),
        &toml,
        &[("TOKIO_WORKER_THREADS", workers)],
    )
    .await;
    let expected: f64 = workers.parse().unwrap();
    let threads = || async {
        let (_, _, body) = send_fresh(sidepool.admin, get("/metrics")).await;
        metric_value(
            &String::from_utf8_lossy(&body),
            "http_pool_busy_poll_threads",
            "",
        )
        .expect("gauge present")
    };
    // Readiness checks go to the admin listener, which does not open a window.
    wait_for(&threads, 0.0, "idle before the first request").await;

    let cpu_before = cpu_time(&sidepool);
    let (status, _, body) = send_fresh(sidepool.proxy, get("/ex/ticker")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_ref(), b"{\"ok\":true}");
    assert_eq!(
        threads().await,
        expected,
        "every worker polls after a request"
    );
    wait_for(&threads, 0.0, "the window closes by itself").await;
    let spent = cpu_time(&sidepool) - cpu_before;
    assert!(
        spent >= SPINNING_CPU,
        "{workers} worker(s) polling for {WINDOW} used only {spent:?} of CPU"
    );

    let quiet_start = cpu_time(&sidepool);
    // Measuring CPU over an interval needs the interval to pass: nothing is being awaited here.
    tokio::time::sleep(QUIET).await;
    let idle = cpu_time(&sidepool) - quiet_start;
    assert!(idle <= IDLE_CPU, "idle sidepool used {idle:?} in {QUIET:?}");

    let (status, _, _) = send_fresh(sidepool.proxy, get("/ex/ticker")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        threads().await,
        expected,
        "the next request wakes the pollers"
    );
}

/// Polls `read` until it returns `want` (bounded).
async fn wait_for<F, Fut>(read: F, want: f64, what: &str)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let what = format!("{what}: busy-poll gauge at {want}");
    eventually(&what, async || {
        let got = read().await;
        if got == want { Ok(()) } else { Err(got) }
    })
    .await;
}

/// User + system CPU time of the sidepool process, from `/proc/PID/stat`.
fn cpu_time(process: &Process) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", process.child.id()))
        .expect("/proc/PID/stat");
    // Fields after the command name (which may contain spaces) start at ") ".
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on every Linux configuration sidepool targets.
    Duration::from_millis(ticks * 10)
}
