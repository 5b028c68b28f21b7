//! PostgreSQL v3 protocol: message codec and the connection state machine.
pub mod messages;
pub mod server;
