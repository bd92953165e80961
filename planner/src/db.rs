//! The salsa database of one backup run (or of a long-lived watcher): inputs are set only by
//! the walker, the tracked queries are in `queries/`, and an optional log records which
//! queries executed, for tests.

use std::sync::{Arc, Mutex};

use bakare_store::Repository;

use crate::counters::Counters;
use crate::memo::MemoRecord;
use bakare_store::Chunker;

/// What the queries need besides their inputs: where blobs go and where results are counted.
/// Constant for the life of a database.
pub struct RunContext {
    pub repo: Arc<Repository>,
    pub chunker: Chunker,
    pub counters: Arc<Counters>,
    /// Memo records of files read in this run, written to `state.redb` in batches.
    pub fresh: Mutex<Vec<MemoRecord>>,
    /// Files that could not be read, and why.
    pub errors: Mutex<Vec<(std::path::PathBuf, String)>>,
    /// The repository failed: files not yet read are not read (the run is stopping).
    pub stopped: Mutex<Option<crate::queries::Stop>>,
    /// Nonzero once the user asked the run to stop (the signal's number): files not yet read
    /// are not read, and the backup checkpoints and ends as interrupted.
    pub interrupt: Arc<std::sync::atomic::AtomicUsize>,
    /// The device numbers recorded for files seen on filesystem snapshots.
    pub devices: crate::Devices,
    /// The length and id of the last chunk of zeros stored in this run.
    pub zero_chunk: Mutex<Option<(usize, bakare_store::BlobId)>>,
}

impl RunContext {
    pub fn interrupted(&self) -> bool {
        self.interrupt.load(std::sync::atomic::Ordering::Relaxed) != 0
    }
}

/// The database trait the queries are written against.
#[salsa::db]
pub trait Db: salsa::Database {
    fn run(&self) -> &RunContext;
    /// Records that a query body ran (tests assert on this).
    fn log(&self, line: String);
}

/// The concrete database.
#[salsa::db]
#[derive(Clone)]
pub struct PlanDb {
    storage: salsa::Storage<Self>,
    run: Arc<RunContext>,
    logs: Option<Arc<Mutex<Vec<String>>>>,
}

impl PlanDb {
    pub fn new(run: RunContext) -> Self {
        Self::with_context(Arc::new(run))
    }

    /// A fresh database sharing a run's context (about 12 µs: cheap enough per folder).
    pub fn with_context(run: Arc<RunContext>) -> Self {
        Self { storage: salsa::Storage::default(), run, logs: None }
    }

    /// A database that logs each executed query: `WillExecute` events from salsa and the
    /// query bodies' own lines.
    pub fn with_log(run: RunContext) -> Self {
        let logs: Arc<Mutex<Vec<String>>> = Arc::default();
        let events = logs.clone();
        let storage = salsa::Storage::new(Some(Box::new(move |event: salsa::Event| {
            if let salsa::EventKind::WillExecute { database_key } = event.kind
                && let Ok(mut l) = events.lock()
            {
                l.push(format!("execute {database_key:?}"));
            }
        })));
        Self { storage, run: Arc::new(run), logs: Some(logs) }
    }

    /// Takes the log lines so far.
    pub fn take_log(&self) -> Vec<String> {
        self.logs.as_ref().and_then(|l| l.lock().ok().map(|mut l| std::mem::take(&mut *l))).unwrap_or_default()
    }

    pub fn context(&self) -> &Arc<RunContext> {
        &self.run
    }
}

#[salsa::db]
impl salsa::Database for PlanDb {}

#[salsa::db]
impl Db for PlanDb {
    fn run(&self) -> &RunContext {
        &self.run
    }

    fn log(&self, line: String) {
        if let Some(l) = &self.logs
            && let Ok(mut l) = l.lock()
        {
            l.push(line);
        }
    }
}
