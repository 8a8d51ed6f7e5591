//! keel-timed: is the clock right? An SNTPv4 check of the configured NTP servers,
//! the verdict (ok / skewed / unreachable / unconfigured / manual), and the clock
//! gate that update install and download-key generation consult.

pub mod config;
pub mod packet;
pub mod service;
pub mod sntp;
pub mod system;
pub mod verdict;

pub use packet::{parse, Packet, ParseError};
pub use service::{Settings, Timed};
