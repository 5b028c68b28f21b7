//! Helpers shared by the integration tests: a real OmenDB cluster of separate processes on
//! loopback, and a throwaway PostgreSQL 15 to compare answers with.
#![allow(dead_code)]

pub mod cluster;
pub mod postgres;
