use super::*;

#[test]
fn label_arrays_are_indexed_by_discriminant() {
    for (i, reason) in CloseReason::ALL.iter().enumerate() {
        assert_eq!(*reason as usize, i);
    }
    for (i, kind) in ErrorKind::ALL.iter().enumerate() {
        assert_eq!(*kind as usize, i);
    }
    assert_eq!(RetryReason::Idempotent as usize, 1);
    assert_eq!(DnsResult::Static as usize, 2);
    for (i, result) in DrainResult::ALL.iter().enumerate() {
        assert_eq!(*result as usize, i);
    }
    assert_eq!(WarmResult::Failed as usize, 1);
    for (i, cause) in crate::ratelimit::Cause::ALL.iter().enumerate() {
        assert_eq!(*cause as usize, i);
    }
    assert_eq!(crate::ratelimit::Reason::Budget as usize, 2);
    assert_eq!(crate::ratelimit::Class::Low as usize, 2);
}

#[test]
fn instances_are_isolated_and_render_labelled_series() {
    let a = Metrics::new(100);
    let b = Metrics::new(100);
    let name: Arc<str> = Arc::from("bybit");
    let m = a.upstream(&name, 30);
    struct Fixed;
    impl PoolGaugeSource for Fixed {
        fn snapshot(&self, out: &mut Vec<(Arc<str>, PoolCounts)>) {
            let counts = PoolCounts {
                active: 3,
                idle: 1,
                connecting: 0,
                waiting: 2,
            };
            out.push((Arc::from("bybit"), counts));
        }
    }
    let source: Arc<dyn PoolGaugeSource> = Arc::new(Fixed);
    m.attach_pool_gauges(&Arc::downgrade(&source));
    m.attach_pool_gauges(&Arc::downgrade(&source));
    m.connection_closed(CloseReason::Evicted);
    m.request_done(204, Duration::from_millis(3));
    let text = a.render();
    assert!(
        text.contains("http_pool_connections_active{upstream=\"bybit\"} 3"),
        "{text}"
    );
    assert_eq!(
        text.matches("http_pool_connections_active{").count(),
        1,
        "a source attached twice is read once: {text}"
    );
    assert!(
        text.contains("# TYPE http_pool_requests_waiting gauge\n")
            && text.contains("http_pool_requests_waiting{upstream=\"bybit\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("http_pool_connections_limit{upstream=\"bybit\"} 30"),
        "{text}"
    );
    assert!(
        text.contains(
            "http_pool_connections_closed_total{upstream=\"bybit\",reason=\"evicted\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("http_pool_requests_total{upstream=\"bybit\",status_class=\"2xx\"} 1"),
        "{text}"
    );
    assert!(!b.render().contains("upstream=\"bybit\""));
    drop(source);
    assert!(
        !a.render().contains("http_pool_connections_active"),
        "a pool set that is gone is not rendered"
    );
    assert!(
        !text.contains("http_pool_connections_active{upstream=\"\"}"),
        "requests that matched no upstream have no pool gauges: {text}"
    );
}
