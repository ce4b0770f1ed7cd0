//! The package manager's node side. [`lifecycle`] runs a package's control
//! scripts and supervises its services on this node; deciding where packages
//! run is the placement engine's job, and recording it the cluster store's.

pub mod lifecycle;
