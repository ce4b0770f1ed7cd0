//! The package manager. [`manager`] is the coordinator the daemon's main
//! loop drives (plan with the placement engine, record in the store, one
//! action at a time); [`agent`] carries out this node's actions on a task of
//! its own; [`lifecycle`] runs a package's control scripts and supervises
//! its services on this node.

pub mod agent;
pub mod coordinator;
pub mod lifecycle;
pub mod manager;
pub mod order;
pub mod peers;
