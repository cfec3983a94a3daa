//! Herald's models: what a worker computes for a job. Today the built-in factorial's compute kernel.

pub mod compute;
