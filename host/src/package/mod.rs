//! The package manager. [`manager`] is the coordinator the daemon's main
//! loop drives (plan with the placement engine, record in the store, one
//! action at a time); [`agent`] carries out this node's actions on a task of
//! its own; [`lifecycle`] runs a package's control scripts and supervises
//! its services on this node; [`parts`] starts and releases the volume
//! groups, file systems, addresses and OCF agents a package takes with it.

pub mod agent;
pub mod lifecycle;
pub mod manager;
pub mod order;
pub mod parts;
pub mod peers;
