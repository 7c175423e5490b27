//! Benchmark tools (`twopc bench …`): a no-op participant and a load generator.
//!
//! These are for measuring the coordinator, not for production: the no-op participant keeps
//! nothing and promises nothing.

pub mod load;
pub mod noop;
pub mod recovery;
