//! The frontends' metrics: sessions and logins, by protocol.
//!
//! Registered by [`register`] into the gateway's one registry, beside the storage families
//! (`bucketgate_storage::metrics`), and rendered by the admin endpoint.

use bucketgate_storage::metrics::{labels, register_family, CounterFamily, GaugeFamily};
use prometheus_client::registry::Registry;
use std::sync::LazyLock;

static SESSIONS: LazyLock<CounterFamily> = LazyLock::new(CounterFamily::default);
static SESSIONS_ACTIVE: LazyLock<GaugeFamily> = LazyLock::new(GaugeFamily::default);
static LOGINS: LazyLock<CounterFamily> = LazyLock::new(CounterFamily::default);

/// Registers the session and login families into `reg`.
pub fn register(reg: &mut Registry) {
    register_family(
        reg,
        "bucketgate_sessions_total",
        "Sessions admitted, by protocol.",
        SESSIONS.clone(),
    );
    register_family(
        reg,
        "bucketgate_sessions_active",
        "Sessions open now, by protocol.",
        SESSIONS_ACTIVE.clone(),
    );
    register_family(
        reg,
        "bucketgate_logins_total",
        "Login attempts, by protocol and result (ok or the failure reason).",
        LOGINS.clone(),
    );
}

/// The session and login families alone, rendered: for tests.
pub fn render() -> String {
    let mut reg = Registry::default();
    register(&mut reg);
    bucketgate_storage::metrics::encode(&reg)
}

/// Counts one open session of `protocol` for as long as it lives.
pub struct SessionGuard(&'static str);

impl SessionGuard {
    /// A session of `protocol` (`sftp`, `ftp`) was admitted.
    pub fn new(protocol: &'static str) -> Self {
        let l = labels(&[("protocol", protocol)]);
        SESSIONS.get_or_create(&l).inc();
        SESSIONS_ACTIVE.get_or_create(&l).inc();
        SessionGuard(protocol)
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        SESSIONS_ACTIVE
            .get_or_create(&labels(&[("protocol", self.0)]))
            .dec();
    }
}

/// A login attempt ended: `result` is `ok` or the failure reason.
pub fn login(protocol: &'static str, result: &str) {
    LOGINS
        .get_or_create(&labels(&[("protocol", protocol), ("result", result)]))
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_logins_and_sessions() {
        login("sftp", "unit_ok");
        login("sftp", "unit_ok");
        login("ftp", "unit_wrong_password");
        {
            let _g = SessionGuard::new("unit");
            assert!(render().contains("bucketgate_sessions_active{protocol=\"unit\"} 1\n"));
        }
        let text = render();
        assert!(
            text.contains("# TYPE bucketgate_logins_total counter\n"),
            "{text}"
        );
        assert!(text.contains(
            "# HELP bucketgate_logins_total Login attempts, by protocol and result (ok or the failure reason).\n"
        ), "{text}");
        assert!(text.contains("bucketgate_logins_total{protocol=\"sftp\",result=\"unit_ok\"} 2\n"));
        assert!(text.contains(
            "bucketgate_logins_total{protocol=\"ftp\",result=\"unit_wrong_password\"} 1\n"
        ));
        assert!(text.contains("# TYPE bucketgate_sessions_active gauge\n"));
        assert!(text.contains("bucketgate_sessions_active{protocol=\"unit\"} 0\n"));
        assert!(text.contains("bucketgate_sessions_total{protocol=\"unit\"} 1\n"));
    }
}
