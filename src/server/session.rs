//! Per-connection session state (docs/PROTOCOL.md §3): authentication and wire mode.

#[derive(Debug, Default)]
pub struct Session {
    pub authenticated: bool,
    /// Responses and events are JSON lines, and JSON-line input is accepted.
    pub jsonl: bool,
}
