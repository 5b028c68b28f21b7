//! Helpers shared by the integration tests: a real OmenDB cluster of separate processes on
//! loopback, `omendb start` and its branch commands as a user runs them, a fault-injecting
//! TCP relay, tokio-postgres client helpers, and a throwaway PostgreSQL 15 to compare
//! answers with.
#![allow(dead_code)]

pub mod cluster;
pub mod launcher;
pub mod pageserver;
pub mod pg;
pub mod postgres;
pub mod relay;
pub mod rng;
