//! The package manager. [`coordinator`] decides (pure: facts in, effects
//! out); [`manager`] is the shell the daemon's main loop drives (keeps the
//! facts, carries the effects out); [`order`] is the plan's partial order;
//! [`agent`] carries out this node's runs and halts, one task per package;
//! [`lifecycle`] runs a package's control scripts and supervises its
//! services on this node; [`peers`] watches the other nodes' heartbeats.

pub mod agent;
pub mod coordinator;
pub mod lifecycle;
pub mod manager;
pub mod order;
pub mod peers;
