//! Keeping a repository whole and small: the survey and repair of every object, garbage
//! collection (mark, sweep, repack) and the retention policy that chooses what to forget.
//!
//! - [`verify`]: every object checked, every snapshot's trees walked, losses named.
//! - [`repair`]: what redundancy can restore (mirrors, tree copies, parity), and marking
//!   what it cannot.
//! - [`gc`]: garbage collection's policy and why it is safe without a lock; [`prune`]: the
//!   sweep and mark as a computed plan ([`prune::PrunePlan`]) and its execution.
//! - [`forget`]: which snapshots a retention policy keeps.
//! - [`orphans`]: indexing packs an interrupted backup wrote but never indexed.

pub mod forget;
pub mod gc;
pub mod orphans;
pub mod prune;
pub mod repair;
pub mod verify;
