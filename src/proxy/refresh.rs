//! DNS refresh for pooled upstreams: when an upstream's cached answer expires while it has
//! open connections, the name is looked up again; connections to addresses that left the answer
//! are retired (idle ones closed now, active ones after their request), so traffic follows a
//! DNS change within one TTL (capped by `dns.max_ttl`) instead of staying on the old address
//! for as long as the connections are kept alive.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Proxy;

/// The shortest gap between two lookups of one name, so a zero TTL cannot spin.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Spawns one refresher per upstream whose address comes from DNS. Abort them at shutdown;
/// one that wakes after the proxy is gone ends by itself.
pub fn spawn_dns_refreshers(proxy: &Arc<Proxy>) -> Vec<JoinHandle<()>> {
    (0..proxy.upstreams.len())
        .filter(|&i| proxy.upstreams[i].connector.addresses().is_some())
        .map(|index| tokio::spawn(refresh(Arc::downgrade(proxy), index)))
        .collect()
}

async fn refresh(proxy: Weak<Proxy>, index: usize) {
    let mut last = Instant::now();
    loop {
        let Some(strong) = proxy.upgrade() else {
            return;
        };
        let upstream = &strong.upstreams[index];
        // An answer stored by a new connection's lookup may retire connections too.
        upstream.pool.close_retired_idle();
        let stored = upstream.connector.dns_stored();
        let wake = match upstream.connector.dns_expires() {
            // With nothing open, the next connection looks the name up itself.
            Some(expires) if upstream.pool.open() > 0 => Some(expires.max(last + MIN_INTERVAL)),
            _ => None,
        };
        let due = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let woke_by_timer = tokio::select! {
            () = stored => false,
            () = due => true,
        };
        if woke_by_timer {
            last = Instant::now();
            upstream.connector.refresh_dns().await;
        }
        drop(strong);
    }
}
