"""Reading Prometheus text (with prometheus_client's parser) and percentiles."""

from prometheus_client.parser import text_string_to_metric_families


def pct(samples):
    if not samples:
        return {}
    s = sorted(samples)

    def at(p):
        return s[min(len(s) - 1, max(0, int(round(p / 100.0 * len(s) + 0.5)) - 1))]

    return {"n": len(s), "mean": sum(s) / len(s), "p50": at(50), "p90": at(90), "p99": at(99),
            "min": s[0], "max": s[-1]}


def samples(text, name):
    """(labels, value) of every sample named `name` in Prometheus text (prometheus_client's
    parser: the exposition format, escapes and all)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                yield sample.labels, sample.value


def gauge(text, name):
    """Sum of a gauge over all its label sets."""
    return sum(value for _, value in samples(text, name))


def counter(text, name):
    """Sum of a counter over all its label sets."""
    return gauge(text, name)


def counter_by(after, before, name, label):
    """Per value of `label`, the increase of a counter between two scrapes (non-zero only)."""
    def parse(text):
        out = {}
        for labels, value in samples(text, name):
            key = labels.get(label, "")
            out[key] = out.get(key, 0.0) + value
        return out

    a, b = parse(after), parse(before)
    return {k: v - b.get(k, 0.0) for k, v in a.items() if v - b.get(k, 0.0) > 0}


def histogram_delta(before, after, name):
    """Count, mean and an interpolated p99 of a Prometheus histogram between two scrapes."""
    def parse(text):
        buckets = {}
        for labels, value in samples(text, name + "_bucket"):
            le = float(labels["le"])  # "+Inf" parses as inf
            buckets[le] = buckets.get(le, 0.0) + value
        total = sum(v for _, v in samples(text, name + "_sum"))
        count = sum(v for _, v in samples(text, name + "_count"))
        return buckets, total, count

    b0, s0, c0 = parse(before)
    b1, s1, c1 = parse(after)
    count = c1 - c0
    if count <= 0:
        return {"count": 0}
    les = sorted(b1)
    cum = [(le, b1[le] - b0.get(le, 0)) for le in les]

    def quantile(q):
        rank = q * count
        prev_le, prev_c = 0.0, 0.0
        for le, c in cum:
            if c >= rank:
                if le == float("inf"):
                    return prev_le
                frac = (rank - prev_c) / (c - prev_c) if c > prev_c else 1.0
                return prev_le + (le - prev_le) * frac
            prev_le, prev_c = le, c
        return prev_le

    return {"count": count, "mean_s": (s1 - s0) / count, "p50_s": quantile(0.5),
            "p99_s": quantile(0.99),
            "note": "interpolated inside histogram buckets (0.1, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250 ms ...)"}
