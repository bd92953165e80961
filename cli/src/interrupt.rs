//! Ctrl-C and SIGTERM during a backup: the first asks the backup to stop (it writes a
//! checkpoint, marks its session interrupted and exits 130 or 143, so that the same command
//! continues at once); a second one ends the process on the spot.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM};

/// The flag the backup polls: 0, or the number of the signal that asked it to stop.
pub fn install() -> Arc<AtomicUsize> {
    let which = Arc::new(AtomicUsize::new(0));
    let again = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Registered first, so it sees `again` as the previous signal left it.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, again.clone());
        let _ = signal_hook::flag::register(sig, again.clone());
        let _ = signal_hook::flag::register_usize(sig, which.clone(), sig as usize);
    }
    which
}

/// The backup was stopped by a signal; exit code 128 + its number.
#[derive(Debug)]
pub struct Interrupted(pub usize);

impl Interrupted {
    pub fn from_flag(flag: &AtomicUsize) -> Self {
        Self(flag.load(Ordering::Relaxed))
    }

    pub fn exit_code(&self) -> u8 {
        u8::try_from(128 + self.0.min(127)).unwrap_or(130)
    }
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted: run the same command or `bakare resume` to continue")
    }
}

impl std::error::Error for Interrupted {}
