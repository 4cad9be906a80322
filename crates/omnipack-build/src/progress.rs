//! Progress reporting: the pipeline sends [`Event`]s to a [`Progress`] sink; the CLI draws
//! bars or plain lines from them. Library code never prints.

/// What happened.
#[derive(Debug, Clone)]
pub enum Event {
    /// The build will run these stages (ids, in plan order).
    Planned { stages: Vec<String> },
    /// A stage started. `total_bytes` is known for byte-measured work (quantize, package).
    Started {
        stage: String,
        total_bytes: Option<u64>,
    },
    /// Bytes of a stage done so far.
    Bytes { stage: String, done: u64 },
    /// A stage finished: `cached` when its output came from the cache.
    Finished {
        stage: String,
        cached: bool,
        seconds: f64,
        detail: String,
    },
    /// A stage failed.
    Failed { stage: String, error: String },
    /// A stage did not run because a stage it depends on failed.
    Skipped { stage: String, because: String },
    /// Bytes moved to (`upload`) or from the remote cache for one cache entry (`entry` is
    /// `kind/key` with the key shortened): sent as the transfer goes and once at its end
    /// (`done == total`).
    Transfer {
        entry: String,
        upload: bool,
        done: u64,
        total: u64,
    },
    /// Something worth a line (recovery, a corrupt cache entry being rebuilt, ...).
    Note(String),
    /// A warning.
    Warning(String),
}

/// A sink for [`Event`]s; called from worker threads.
pub trait Progress: Sync {
    /// Receives one event.
    fn event(&self, event: Event);
}

/// Discards every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _event: Event) {}
}

/// Collects events (for tests).
#[derive(Debug, Default)]
pub struct Collect(pub std::sync::Mutex<Vec<Event>>);

impl Progress for Collect {
    fn event(&self, event: Event) {
        if let Ok(mut v) = self.0.lock() {
            v.push(event);
        }
    }
}
