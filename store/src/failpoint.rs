//! Named points where a test freezes a backup as a suspended laptop would be frozen: with
//! `BAKARE_FAILPOINT=<name>[,<name>...]` the process stops itself there with a real SIGSTOP
//! (the test continues it with SIGCONT), the first time each is reached. Points:
//! `before-commit` (the walk and its last checkpoint are done, the commit fence and the
//! snapshot are next), `after-fence` (the fence passed, the snapshot is next),
//! `after-checkpoint` (the first checkpoint of a walk was written), `after-pack` (the first
//! pack was written, not yet indexed) and `before-index` (a flush checked its packs against
//! the GC marks and is about to write their index segment), `before-adopt` (`resume` listed the
//! unindexed packs and is about to index them), `after-fs-snapshot` (a backup took its
//! filesystem snapshots, if any, and has read nothing yet).

use std::collections::HashSet;
use std::sync::Mutex;

static FIRED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Stops the process if `name` is armed, the first time only.
pub fn hit(name: &str) {
    let armed = std::env::var("BAKARE_FAILPOINT").is_ok_and(|v| v.split(',').any(|p| p == name));
    if !armed {
        return;
    }
    let first = FIRED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get_or_insert_with(HashSet::new)
        .insert(name.to_string());
    if !first {
        return;
    }
    // The process is stopped until SIGCONT: `kill` returns after sending, and this thread
    // is frozen along with the rest before it can go on.
    let _ = std::process::Command::new("kill").args(["-STOP", &std::process::id().to_string()]).status();
    std::thread::sleep(std::time::Duration::from_millis(50));
}
