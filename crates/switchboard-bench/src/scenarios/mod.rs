//! The scenarios, one module each: options, the run, and the figures gathered into the
//! scenario's report (rendered by [`crate::report`]). [`checks`] holds what every scenario
//! checks before it starts.

pub mod chaos;
pub mod checks;
pub mod connect;
pub mod fanout;
pub mod idle;
pub mod ramp;
pub mod recover;
pub mod rooms;
