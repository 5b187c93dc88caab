//! The test kit (`crates/switchboard-testkit`) under the name `support`, for the
//! tests that still include `mod support;` (`tests/config.rs`); the others import
//! `switchboard_testkit` directly.

pub use switchboard_testkit::*;
