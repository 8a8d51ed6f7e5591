//! keel-update: signed base bundles streamed into the inactive root slot.
//!
//! One pass over the upload: the clock gate first, then keel-bundle's verifier
//! checks the signature and manifest from the first bytes and the policy says
//! whether it may be installed here (product, kind, versions, slot size); the
//! payload then streams into the inactive slot through keel-bundle's hashing
//! reader while a second thread reads each written range back past the page
//! cache (O_DIRECT) and hashes it again; after the final fsync, and only when
//! both digests and the size match the signed manifest, is the trial boot armed
//! through keel-boot. `state.json` remembers the slots and the pending trial; after the reboot the boot state tells how the
//! trial ended (installed, or rolled back by GRUB), and an admin may roll back to
//! the previous good version.
//!
//! Online (`online.rs`, `chain.rs`): the signed feed is fetched over HTTPS (through
//! the configured proxy), verified and assessed; a bundle it names is downloaded
//! straight into the same install path; *install all in order* runs the chain one
//! healthy boot at a time. `identity.rs` keeps the key that signs download keys.
//!
//! Socket-activated (`keel-update.socket`): [`idle::serve`] exits after
//! `--idle-exit` seconds without requests, and systemd starts it again at the next
//! connection.

pub mod api;
pub mod apps;
pub mod chain;
pub mod identity;
pub mod idle;
pub mod online;
pub mod service;
pub mod settings;
pub mod slot;
pub mod state;

pub use service::{Config, ErrorKind, UpdateError, Updater};
pub use state::{PendingTrial, SlotContent, SlotRecord, UpdateState, STATE_FILE};
