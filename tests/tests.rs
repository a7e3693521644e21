//! dp's integration tests: one binary, one module per tool or area, real servers.

mod util;

mod deps;
mod django;
mod dp;
mod faults;
mod hosts;
mod man;
mod migrate;
mod restart;
mod shellcheck;
mod shells;
mod store;
mod sync;
mod transport;
mod workspace;
