//! The parts of keelctl's two programs that both link: `keelctl` (src/main.rs, the
//! command line, on the box and with `--url`) and `keel-menu` (src/bin/keel-menu.rs,
//! the local console menu). The menu runs all the time on two terminals, so it links
//! only this: neither the HTTPS client of `--url` nor keelctl's command tree.

pub mod local;
pub mod menu;
