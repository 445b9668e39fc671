//! The daemon's operations: each changing request runs as one, with an id a client follows and
//! may cancel ([`berth_api::Operation`]). An operation's latest state is kept in a watch channel
//! so that `/wait` wakes when it changes; finished ones are kept for [`KEEP`] and then dropped.

use berth_api::{
    DaemonEvent, Error, Event, EventKind, Instance, Operation, OperationStatus,
    OPERATION_EVENTS_MAX,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a finished operation can still be read.
pub const KEEP: Duration = Duration::from_secs(300);

/// Every operation of this daemon, and the event stream they and the instances' lifecycle feed
/// (`/1.0/events`).
#[derive(Debug, Clone)]
pub struct Operations {
    inner: Arc<Mutex<HashMap<String, Slot>>>,
    events: tokio::sync::broadcast::Sender<DaemonEvent>,
}

/// Events a slow listener may fall behind by before it misses some.
const EVENTS_BACKLOG: usize = 1024;

impl Default for Operations {
    fn default() -> Operations {
        Operations {
            inner: Arc::default(),
            events: tokio::sync::broadcast::channel(EVENTS_BACKLOG).0,
        }
    }
}

#[derive(Debug)]
struct Slot {
    tx: watch::Sender<Operation>,
    /// The worker process doing it, once it runs.
    worker: Option<u32>,
    /// A client asked to cancel it.
    cancelled: bool,
    finished: Option<Instant>,
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What a successful operation made.
#[derive(Debug)]
pub enum Made {
    /// Nothing to show (a state change, a delete).
    Nothing,
    /// An instance (a create).
    Instance(Box<Instance>),
    /// An image (a build, an import).
    Image(Box<berth_api::Image>),
}

impl Operations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // A panic while the map was held leaves it consistent (each change is one insert or
        // field write), so a poisoned lock is taken as it is.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Begin an operation on `resources`.
    pub fn begin(
        &self,
        description: String,
        resources: Vec<String>,
        may_cancel: bool,
    ) -> Operation {
        let t = now();
        let op = Operation {
            id: uuid::Uuid::new_v4().to_string(),
            description,
            status: OperationStatus::Running,
            created_at: t.clone(),
            updated_at: t,
            resources,
            events: Vec::new(),
            instance: None,
            image: None,
            error: None,
            may_cancel,
        };
        {
            let mut map = self.lock();
            map.retain(|_, s| s.finished.is_none_or(|f| f.elapsed() < KEEP));
            map.insert(
                op.id.clone(),
                Slot {
                    tx: watch::channel(op.clone()).0,
                    worker: None,
                    cancelled: false,
                    finished: None,
                },
            );
        }
        tracing::info!(id = %op.id, "operation began: {}", op.description);
        self.publish(DaemonEvent::Operation {
            timestamp: op.created_at.clone(),
            operation: Box::new(op.clone()),
        });
        op
    }

    fn change(&self, id: &str, f: impl FnOnce(&mut Operation)) {
        let changed = self.lock().get(id).map(|s| {
            s.tx.send_modify(|op| {
                f(op);
                op.updated_at = now();
            });
            s.tx.borrow().clone()
        });
        if let Some(op) = changed {
            self.publish(DaemonEvent::Operation {
                timestamp: op.updated_at.clone(),
                operation: Box::new(op),
            });
        }
    }

    /// Send an event to every listener (none listening is fine).
    fn publish(&self, ev: DaemonEvent) {
        let _ = self.events.send(ev);
    }

    /// An instance's lifecycle changed.
    pub fn lifecycle(&self, ev: Event) {
        self.publish(DaemonEvent::Lifecycle {
            timestamp: now(),
            event: ev,
        });
    }

    /// Listen to the event stream from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<DaemonEvent> {
        self.events.subscribe()
    }

    /// A step of its progress (a lifecycle step goes to the event stream too).
    pub fn progress(&self, id: &str, ev: Event) {
        if ev.kind == EventKind::Lifecycle {
            self.lifecycle(ev.clone());
        }
        self.change(id, |op| {
            if op.events.len() >= OPERATION_EVENTS_MAX {
                op.events.remove(0);
            }
            op.events.push(ev);
        });
    }

    /// Its worker began as `pid`: whether the operation was cancelled before that (the caller
    /// then ends the worker).
    pub fn running_in(&self, id: &str, pid: u32) -> bool {
        match self.lock().get_mut(id) {
            Some(s) => {
                s.worker = Some(pid);
                s.cancelled
            }
            None => false,
        }
    }

    /// Whether a client cancelled it.
    pub fn is_cancelled(&self, id: &str) -> bool {
        self.lock().get(id).is_some_and(|s| s.cancelled)
    }

    /// It ended with `r` (cancelled if a client asked, whatever the worker answered).
    pub fn finish(&self, id: &str, r: Result<Made, Error>) {
        let cancelled = {
            let mut map = self.lock();
            let Some(s) = map.get_mut(id) else { return };
            s.finished = Some(Instant::now());
            s.worker = None;
            s.cancelled
        };
        self.change(id, |op| match (cancelled, r) {
            (true, _) => {
                op.status = OperationStatus::Cancelled;
                op.error = Some(Error::conflict(format!(
                    "operation {} ({}) was cancelled",
                    op.id, op.description
                )));
            }
            (false, Ok(made)) => {
                op.status = OperationStatus::Success;
                match made {
                    Made::Nothing => {}
                    Made::Instance(i) => op.instance = Some(*i),
                    Made::Image(i) => op.image = Some(*i),
                }
            }
            (false, Err(e)) => {
                op.status = OperationStatus::Failure;
                op.error = Some(e);
            }
        });
        if let Ok(op) = self.get(id) {
            match &op.error {
                Some(e) => {
                    tracing::warn!(id = %op.id, "operation {:?}: {}: {}", op.status, op.description, e.message)
                }
                None => tracing::info!(id = %op.id, "operation succeeded: {}", op.description),
            }
        }
    }

    /// Ask to cancel it: its worker's pid, if it runs yet (the caller ends it; one that starts
    /// later is ended by [`Operations::running_in`]'s answer).
    pub fn cancel(&self, id: &str) -> Result<Option<u32>, Error> {
        let mut map = self.lock();
        let s = map.get_mut(id).ok_or_else(|| not_found(id))?;
        let op = s.tx.borrow().clone();
        if op.status.is_final() {
            return Err(Error::conflict(format!(
                "operation {id} has already ended ({:?})",
                op.status
            )));
        }
        if !op.may_cancel {
            return Err(Error::invalid(
                "id",
                format!("operation {id} ({}) cannot be cancelled", op.description),
            ));
        }
        s.cancelled = true;
        Ok(s.worker)
    }

    /// Its state now.
    pub fn get(&self, id: &str) -> Result<Operation, Error> {
        self.lock()
            .get(id)
            .map(|s| s.tx.borrow().clone())
            .ok_or_else(|| not_found(id))
    }

    /// Every operation known, oldest first.
    pub fn list(&self) -> Vec<Operation> {
        let mut v: Vec<Operation> = self
            .lock()
            .values()
            .map(|s| s.tx.borrow().clone())
            .collect();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        v
    }

    /// Its state once it has ended, or after `timeout` (then as it is).
    pub async fn wait(&self, id: &str, timeout: Option<Duration>) -> Result<Operation, Error> {
        let mut rx = self
            .lock()
            .get(id)
            .map(|s| s.tx.subscribe())
            .ok_or_else(|| not_found(id))?;
        let ended = rx.wait_for(|op| op.status.is_final());
        let op = match timeout {
            Some(t) => match tokio::time::timeout(t, ended).await {
                Ok(r) => r.map(|op| op.clone()).ok(),
                Err(_) => None,
            },
            None => ended.await.map(|op| op.clone()).ok(),
        };
        match op {
            Some(op) => Ok(op),
            None => self.get(id),
        }
    }
}

fn not_found(id: &str) -> Error {
    Error::new(
        berth_api::ErrorKind::NotFound,
        format!(
            "no operation {id} (finished ones are kept for {} s)",
            KEEP.as_secs()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(m: &str) -> Event {
        Event {
            kind: berth_api::EventKind::Progress,
            instance: "web".into(),
            message: m.into(),
            elapsed_ms: 0,
        }
    }

    #[tokio::test]
    async fn an_operation_is_followed_to_its_end() {
        let ops = Operations::default();
        let op = ops.begin("creating instance web".into(), vec![], true);
        assert_eq!(op.status, OperationStatus::Running);
        ops.progress(&op.id, ev("cloning the disk"));
        let waited = ops
            .wait(&op.id, Some(Duration::from_millis(20)))
            .await
            .unwrap();
        assert_eq!(waited.status, OperationStatus::Running);
        assert_eq!(waited.events.len(), 1);
        let (ops2, id) = (ops.clone(), op.id.clone());
        let waiter = tokio::spawn(async move { ops2.wait(&id, None).await });
        ops.finish(&op.id, Err(Error::conflict("web exists")));
        let done = waiter.await.unwrap().unwrap();
        assert_eq!(done.status, OperationStatus::Failure);
        assert_eq!(done.outcome().unwrap_err().message, "web exists");
        assert_eq!(ops.list().len(), 1);
        assert_eq!(
            ops.cancel(&op.id).unwrap_err().kind,
            berth_api::ErrorKind::Conflict
        );
        assert_eq!(
            ops.get("nope").unwrap_err().kind,
            berth_api::ErrorKind::NotFound
        );
    }

    #[tokio::test]
    async fn operations_and_lifecycle_reach_the_event_stream() {
        let ops = Operations::default();
        let mut rx = ops.subscribe();
        let op = ops.begin("creating instance web".into(), vec![], true);
        let mut created = ev("created");
        created.kind = EventKind::Lifecycle;
        ops.progress(&op.id, created);
        ops.finish(&op.id, Ok(Made::Nothing));
        let mut seen = Vec::new();
        while let Ok(e) = rx.try_recv() {
            seen.push(match e {
                DaemonEvent::Operation { operation, .. } => format!("{:?}", operation.status),
                DaemonEvent::Lifecycle { event, .. } => event.message,
                DaemonEvent::Logging { message, .. } => message,
            });
        }
        assert_eq!(seen, ["Running", "created", "Running", "Success"]);
    }

    #[tokio::test]
    async fn a_cancelled_operation_ends_cancelled_and_others_cannot_be() {
        let ops = Operations::default();
        let op = ops.begin("creating instance web".into(), vec![], true);
        assert_eq!(ops.cancel(&op.id).unwrap(), None);
        // The worker starts after the cancel: it is told to stop at once.
        assert!(ops.running_in(&op.id, 42));
        ops.finish(&op.id, Ok(Made::Nothing));
        let done = ops.get(&op.id).unwrap();
        assert_eq!(done.status, OperationStatus::Cancelled);
        assert!(done.error.unwrap().message.contains("cancelled"));

        let fixed = ops.begin("stopping instance web".into(), vec![], false);
        assert_eq!(
            ops.cancel(&fixed.id).unwrap_err().kind,
            berth_api::ErrorKind::Invalid
        );
        for _ in 0..OPERATION_EVENTS_MAX + 5 {
            ops.progress(&fixed.id, ev("step"));
        }
        assert_eq!(
            ops.get(&fixed.id).unwrap().events.len(),
            OPERATION_EVENTS_MAX
        );
    }
}
