//! vigil-host: the node daemon behind the `vigil` binary.

pub mod api;
pub mod cli;
pub mod config;
pub mod criteria;
pub mod daemon;
pub mod generate;
pub mod guard;
pub mod hooks;
pub mod http;
pub mod hub;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod package;
pub mod page;
pub mod placement;
pub mod registry;
pub mod runtime;
pub mod store;
pub mod validation;
pub mod views;
pub mod watch;
