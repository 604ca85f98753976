//! JSON output conventions shared by the engine and the server.

pub mod canonical;
