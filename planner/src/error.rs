//! Errors that stop a whole backup or restore. A problem with one file is not one of them:
//! it is recorded in that file's tree entry and the run goes on.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error(transparent)]
    Store(#[from] bakare_store::StoreError),
    /// (Causes are in the messages, not chained: `{:#}` would print them twice.)
    #[error("source path {path} does not exist or cannot be read: {cause}")]
    Source { path: PathBuf, cause: std::io::Error },
    #[error("invalid exclude pattern {pattern:?}: {reason}")]
    Exclude { pattern: String, reason: String },
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("restore target {0} is not empty; use --overwrite to restore into it anyway")]
    TargetNotEmpty(PathBuf),
    #[error(transparent)]
    Read(#[from] std::io::Error),
    #[error("backup stopped: {0}")]
    Fatal(String),
    /// The repository's storage failed; `resume` continues once it is fixed.
    #[error("backup stopped: {0}")]
    Resumable(String),
    /// The local name index (`names.redb`) is damaged: delete it and build it again.
    #[error("the local name index is damaged ({0})")]
    NameIndexDamaged(String),
    /// The user stopped the backup (SIGINT, SIGTERM); it checkpointed and can be continued.
    #[error("interrupted")]
    Interrupted,
    #[error("path {0:?} is not in the snapshot")]
    NoSuchPath(String),
}

impl PlanError {
    /// Whether the run stopped because the repository's storage failed (full, unreachable),
    /// so that continuing it later can succeed.
    pub fn is_resumable(&self) -> bool {
        match self {
            PlanError::Resumable(_) => true,
            PlanError::Store(bakare_store::StoreError::Backend(e)) => !e.is_permanent(),
            _ => false,
        }
    }
}

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> PlanError {
    let path = path.into();
    move |cause| PlanError::Io { path, cause }
}
