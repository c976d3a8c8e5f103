//! S3 requests: counts by operation and status, latency, retries, multipart uploads in flight.

use super::{labels, register_family, CounterFamily, GaugeFamily, Labels};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::LazyLock;
use std::time::Duration;

/// Latency buckets (seconds) for S3 requests: from a local MinIO to a slow WAN link.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

static REQUESTS: LazyLock<CounterFamily> = LazyLock::new(CounterFamily::default);
static DURATION: LazyLock<HistogramFamily> =
    LazyLock::new(|| HistogramFamily::new_with_constructor(latency_histogram));
static RETRIES: LazyLock<CounterFamily> = LazyLock::new(CounterFamily::default);
static MULTIPART_IN_FLIGHT: LazyLock<GaugeFamily> = LazyLock::new(GaugeFamily::default);
static MULTIPART_ABORTED: LazyLock<CounterFamily> = LazyLock::new(CounterFamily::default);

pub(super) fn register(reg: &mut Registry) {
    register_family(
        reg,
        "bucketgate_s3_requests_total",
        "S3 requests, by remote, operation and HTTP status (error: no answer).",
        REQUESTS.clone(),
    );
    register_family(
        reg,
        "bucketgate_s3_request_duration_seconds",
        "S3 request latency until the response head, by remote and operation.",
        DURATION.clone(),
    );
    register_family(
        reg,
        "bucketgate_s3_retries_total",
        "S3 requests retried, by remote and operation.",
        RETRIES.clone(),
    );
    register_family(
        reg,
        "bucketgate_s3_multipart_uploads_in_flight",
        "Multipart uploads created and not yet completed or aborted, by remote.",
        MULTIPART_IN_FLIGHT.clone(),
    );
    register_family(
        reg,
        "bucketgate_s3_multipart_uploads_aborted_total",
        "Multipart uploads aborted, by remote.",
        MULTIPART_ABORTED.clone(),
    );
}

/// The S3 operation a request performs, for the `operation` label.
pub fn s3_operation(method: &str, query: &[(String, String)], copy_source: bool) -> &'static str {
    let has = |k: &str| query.iter().any(|(q, _)| q == k);
    match method {
        "GET" if has("uploads") => "LIST_MULTIPART",
        "GET" if has("list-type") || has("prefix") || has("delimiter") => "LIST",
        "GET" if has("location") => "GET_LOCATION",
        "GET" => "GET",
        "HEAD" => "HEAD",
        "PUT" if has("partNumber") && copy_source => "UPLOAD_PART_COPY",
        "PUT" if has("partNumber") => "UPLOAD_PART",
        "PUT" if copy_source => "COPY",
        "PUT" => "PUT",
        "POST" if has("uploads") => "CREATE_MULTIPART",
        "POST" if has("uploadId") => "COMPLETE_MULTIPART",
        "POST" if has("delete") => "DELETE_OBJECTS",
        "DELETE" if has("uploadId") => "ABORT_MULTIPART",
        "DELETE" => "DELETE",
        _ => "OTHER",
    }
}

/// One S3 HTTP exchange ended: `status` is the HTTP status, or `error` when no answer came.
pub fn s3_request(remote: &str, operation: &'static str, status: &str, elapsed: Duration) {
    REQUESTS
        .get_or_create(&labels(&[
            ("remote", remote),
            ("operation", operation),
            ("status", status),
        ]))
        .inc();
    DURATION
        .get_or_create(&labels(&[("remote", remote), ("operation", operation)]))
        .observe(elapsed.as_secs_f64());
}

/// An S3 request is sent again after a retryable failure.
pub fn s3_retry(remote: &str, operation: &'static str) {
    RETRIES
        .get_or_create(&labels(&[("remote", remote), ("operation", operation)]))
        .inc();
}

/// A multipart upload was created (+1) or ended (-1), and whether it was aborted.
pub fn multipart(remote: &str, delta: i64, aborted: bool) {
    let remote = labels(&[("remote", remote)]);
    MULTIPART_IN_FLIGHT.get_or_create(&remote).inc_by(delta);
    if aborted {
        MULTIPART_ABORTED.get_or_create(&remote).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_s3_operations() {
        let q = |k: &str| vec![(k.to_string(), String::new())];
        assert_eq!(s3_operation("GET", &q("list-type"), false), "LIST");
        assert_eq!(
            s3_operation("PUT", &q("partNumber"), true),
            "UPLOAD_PART_COPY"
        );
        assert_eq!(s3_operation("PUT", &[], true), "COPY");
        assert_eq!(
            s3_operation("POST", &q("uploads"), false),
            "CREATE_MULTIPART"
        );
        assert_eq!(
            s3_operation("DELETE", &q("uploadId"), false),
            "ABORT_MULTIPART"
        );
        assert_eq!(s3_operation("HEAD", &[], false), "HEAD");
    }

    #[test]
    fn renders_requests_histograms_and_gauges() {
        s3_request("r\"1", "GET", "200", Duration::from_millis(30));
        multipart("r\"1", 1, false);
        multipart("r\"1", 1, false);
        multipart("r\"1", -1, true);
        let text = super::super::render();
        assert!(
            text.contains("# TYPE bucketgate_s3_requests_total counter\n"),
            "{text}"
        );
        assert!(text.contains(
            "bucketgate_s3_requests_total{remote=\"r\\\"1\",operation=\"GET\",status=\"200\"} 1\n"
        ), "{text}");
        assert!(text.contains(
            "bucketgate_s3_request_duration_seconds_bucket{remote=\"r\\\"1\",operation=\"GET\",le=\"0.025\"} 0\n"
        ));
        assert!(text.contains(
            "bucketgate_s3_request_duration_seconds_bucket{remote=\"r\\\"1\",operation=\"GET\",le=\"0.05\"} 1\n"
        ));
        assert!(text.contains(
            "bucketgate_s3_request_duration_seconds_bucket{remote=\"r\\\"1\",operation=\"GET\",le=\"1\"} 1\n"
        ), "{text}");
        assert!(text.contains(
            "bucketgate_s3_request_duration_seconds_count{remote=\"r\\\"1\",operation=\"GET\"} 1\n"
        ));
        assert!(
            text.contains("bucketgate_s3_multipart_uploads_in_flight{remote=\"r\\\"1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("bucketgate_s3_multipart_uploads_aborted_total{remote=\"r\\\"1\"} 1\n"),
            "{text}"
        );
    }
}
