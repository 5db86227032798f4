//! Prometheus metrics, counted where things happen and rendered by the admin endpoint.

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Label: which front-end.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    /// `mmtp`, `immp`, `xhmtp`.
    pub protocol: String,
}

/// Labels of a refusal: front-end and reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `mmtp`, `immp`, `xhmtp`.
    pub protocol: String,
    /// Short reason (`relay_denied`, `too_large`, …).
    pub reason: String,
}

/// Labels of an event: what happened and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// What (`xhmtp_notify_in`, `xhmtp_notify_out`, `xhmtp_fetch`, `xhmtp_feed`, …).
    pub event: String,
    /// How it ended (`ok`, `retry`, `failed`, or a refusal reason).
    pub outcome: String,
}

/// All of mailgate's metrics.
pub struct Metrics {
    registry: Registry,
    connections: Family<ProtocolLabel, Counter>,
    connections_open: Family<ProtocolLabel, Gauge>,
    connections_refused: Family<RefusalLabels, Counter>,
    store_write_failures: Counter,
    accepted: Family<ProtocolLabel, Counter>,
    refused: Family<RefusalLabels, Counter>,
    events: Family<EventLabels, Counter>,
    queue_depth: Gauge,
    commit_seconds: Histogram,
    commit_batch: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mailgate");
        let connections = Family::<ProtocolLabel, Counter>::default();
        let connections_open = Family::<ProtocolLabel, Gauge>::default();
        let connections_refused = Family::<RefusalLabels, Counter>::default();
        let store_write_failures = Counter::default();
        let accepted = Family::<ProtocolLabel, Counter>::default();
        let refused = Family::<RefusalLabels, Counter>::default();
        let events = Family::<EventLabels, Counter>::default();
        let queue_depth = Gauge::default();
        let commit_seconds = Histogram::new([
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
        ]);
        let commit_batch =
            Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0]);
        registry.register(
            "connections",
            "Connections accepted per front-end",
            connections.clone(),
        );
        registry.register(
            "connections_open",
            "Connections open now per front-end",
            connections_open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused or closed to make room, per front-end and reason (per_ip, \
             per_prefix, full, evicted_idle, accept_error)",
            connections_refused.clone(),
        );
        registry.register(
            "store_write_failures",
            "Store writes or commits that failed (disk full, I/O error)",
            store_write_failures.clone(),
        );
        registry.register(
            "messages_accepted",
            "Messages accepted (durably stored) per front-end",
            accepted.clone(),
        );
        registry.register(
            "messages_refused",
            "Messages refused per front-end and reason",
            refused.clone(),
        );
        registry.register(
            "events",
            "Protocol events (notifications, fetches, feed requests, relay attempts) by outcome",
            events.clone(),
        );
        registry.register(
            "queue_depth",
            "Outbound queue entries pending or in flight",
            queue_depth.clone(),
        );
        registry.register(
            "store_commit_seconds",
            "Latency of one group commit (fsync included)",
            commit_seconds.clone(),
        );
        registry.register(
            "store_commit_batch_size",
            "Writes folded into one group commit",
            commit_batch.clone(),
        );
        Metrics {
            registry,
            connections,
            connections_open,
            connections_refused,
            store_write_failures,
            accepted,
            refused,
            events,
            queue_depth,
            commit_seconds,
            commit_batch,
        }
    }

    fn label(protocol: &str) -> ProtocolLabel {
        ProtocolLabel {
            protocol: protocol.to_owned(),
        }
    }

    /// A connection was accepted; returns a guard that counts it open until dropped.
    pub fn connection_opened(&self, protocol: &str) -> OpenConnection {
        self.connections.get_or_create(&Self::label(protocol)).inc();
        let gauge = self
            .connections_open
            .get_or_create(&Self::label(protocol))
            .clone();
        gauge.inc();
        OpenConnection(gauge)
    }

    /// A connection was refused (or closed to make room) for `reason`.
    pub fn connection_refused(&self, protocol: &str, reason: &str) {
        self.connections_refused
            .get_or_create(&RefusalLabels {
                protocol: protocol.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// A store write or commit failed.
    pub fn store_write_failed(&self) {
        self.store_write_failures.inc();
    }

    /// A message was durably accepted.
    pub fn message_accepted(&self, protocol: &str) {
        self.accepted.get_or_create(&Self::label(protocol)).inc();
    }

    /// A message was refused.
    pub fn message_refused(&self, protocol: &str, reason: &str) {
        self.refused
            .get_or_create(&RefusalLabels {
                protocol: protocol.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Count one `event` that ended with `outcome`.
    pub fn event(&self, event: &str, outcome: &str) {
        self.events
            .get_or_create(&EventLabels {
                event: event.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Set the queue depth gauge.
    pub fn set_queue_depth(&self, depth: u64) {
        self.queue_depth.set(depth as i64);
    }

    /// Record one group commit.
    pub fn observe_commit(&self, took: Duration, batch: usize) {
        self.commit_seconds.observe(took.as_secs_f64());
        self.commit_batch.observe(batch as f64);
    }

    /// Render in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Counts a connection as open until dropped.
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}
