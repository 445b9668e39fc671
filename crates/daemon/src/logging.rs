//! The daemon's log as events (`/1.0/events?type=logging`, `berth monitor --type logging`):
//! a `tracing` layer that hands each record at info or above from berth's own crates to
//! whoever listens, as Incus's logging events do. Nothing is formatted while nobody listens.

use berth_api::DaemonEvent;
use std::fmt::Write as _;
use std::sync::OnceLock;
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::Context;

/// Lines a slow listener may fall behind by before it misses some.
const BACKLOG: usize = 256;

fn channel() -> &'static broadcast::Sender<DaemonEvent> {
    static SINK: OnceLock<broadcast::Sender<DaemonEvent>> = OnceLock::new();
    SINK.get_or_init(|| broadcast::channel(BACKLOG).0)
}

/// Listen to the log from now on.
pub fn subscribe() -> broadcast::Receiver<DaemonEvent> {
    channel().subscribe()
}

/// The layer, with its filter: info and above from berth's crates.
pub fn layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    LogEvents.with_filter(Targets::new().with_target("berth", LevelFilter::INFO))
}

/// Sends log records to the listeners.
struct LogEvents;

/// The message and the fields of a record, as one line.
#[derive(Default)]
struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogEvents {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let tx = channel();
        if tx.receiver_count() == 0 {
            return;
        }
        let mut line = Line::default();
        event.record(&mut line);
        let meta = event.metadata();
        let _ = tx.send(DaemonEvent::Logging {
            timestamp: crate::ops::now(),
            level: meta.level().as_str().to_ascii_lowercase(),
            target: meta.target().to_string(),
            message: line.0.trim().to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn records_from_berth_at_info_and_above_become_events() {
        let mut rx = subscribe();
        let sub = tracing_subscriber::registry().with(layer());
        tracing::subscriber::with_default(sub, || {
            tracing::info!(target: "berth_daemon::ops", id = "1", "operation began");
            tracing::debug!(target: "berth_daemon::ops", "too fine");
            tracing::warn!(target: "hyper", "not berth's");
        });
        match rx.try_recv().unwrap() {
            DaemonEvent::Logging {
                level,
                target,
                message,
                ..
            } => {
                assert_eq!(
                    (level.as_str(), target.as_str(), message.as_str()),
                    ("info", "berth_daemon::ops", "operation began id=1")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(rx.try_recv().is_err(), "only the one record");
    }
}
