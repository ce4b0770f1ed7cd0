//! vigil-host: the node daemon behind the `vigil` binary.
pub mod placement;
