//! The package manager. [`coordinator`] decides (pure: facts in, effects
//! out); [`manager`] is the shell the daemon's main loop drives (keeps the
//! facts, carries the effects out); [`order`] is the plan's partial order;
//! [`agent`] carries out this node's runs and halts, one task per package;
//! [`lifecycle`] runs a package's control scripts and supervises its
//! services on this node; [`parts`] starts and releases the volume groups,
//! file systems, addresses and OCF agents a package takes with it;
//! [`membership`] is the lease, heartbeats and run permits of a cluster
//! (none on one node); [`releases`] the permits this node owes back;
//! [`peers`] writes and watches the heartbeats;
//! [`applied`] is the cluster's applied package set (`vigil apply`).

pub mod agent;
pub mod applied;
pub mod coordinator;
pub mod fail_fast;
pub mod lifecycle;
pub mod manager;
pub mod membership;
pub mod order;
pub mod parts;
pub mod peers;
pub mod releases;
pub mod rounds;
