//! Per-connection session state (spec §3): authentication and wire mode.

#[derive(Debug, Default)]
pub struct Session {
    pub authenticated: bool,
    /// Responses and events are JSON lines, and JSON-line input is accepted.
    pub jsonl: bool,
}
