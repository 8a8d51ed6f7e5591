//! keel-update: signed base bundles streamed into the inactive root slot.
//!
//! One pass over the upload: the clock gate first, then keel-bundle's verifier
//! checks the signature and manifest from the first bytes and the policy says
//! whether it may be installed here (product, kind, versions, slot size); the
//! payload then streams into the inactive slot through keel-bundle's hashing
//! reader, is synced, its page cache dropped and read back and hashed again, and
//! only then is the trial boot armed through keel-boot. `state.json` remembers
//! the slots and the pending trial; after the reboot the boot state tells how the
//! trial ended (installed, or rolled back by GRUB), and an admin may roll back to
//! the previous good version.
//!
//! Socket-activated (`keel-update.socket`): [`idle::serve`] exits after
//! `--idle-exit` seconds without requests, and systemd starts it again at the next
//! connection.

pub mod api;
pub mod idle;
pub mod service;
pub mod slot;
pub mod state;

pub use service::{Config, ErrorKind, UpdateError, Updater};
pub use state::{PendingTrial, SlotContent, SlotRecord, UpdateState, STATE_FORMAT};
