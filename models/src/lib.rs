//! Herald's models: what a worker computes for a job. [`model::Model`] is the interface every model
//! implements; [`factorial::Factorial`] is the built-in one (with its compute kernel in [`compute`]),
//! and [`executable::Executable`] runs a program in any language as a model.
//!
//! This crate needs nothing of Herald's store or queue: the engine runs models, and a model only sees
//! its input and a [`model::Run`] to report progress and learn that it must stop.

pub mod compute;
pub mod executable;
pub mod factorial;
pub mod model;

pub use executable::{parse_model_spec, Executable, ExecutableOptions, ModelSpec, StartError};
pub use factorial::Factorial;
pub use model::{InputError, Model, Models, Progress, Run, RunError, Stop};
