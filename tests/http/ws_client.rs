//! A blocking WebSocket client (tungstenite) for `GET /v1/watch`: open a
//! stream with query parameters and an optional bearer header, read its
//! JSON messages, and see how the server closed it.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use crate::support::{put_machine, RawClient};

/// Longest a test waits for one message.
pub const WS_MESSAGE_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Ws {
    pub socket: WebSocket<TcpStream>,
}

/// Open `/v1/watch?{query}`; the handshake's error (an HTTP answer other
/// than 101) is returned as is.
pub fn try_open(
    addr: SocketAddr,
    query: &str,
    bearer: Option<&str>,
) -> Result<Ws, tungstenite::Error> {
    let mut request = format!("ws://{addr}/v1/watch?{query}")
        .into_client_request()
        .unwrap();
    if let Some(token) = bearer {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
    }
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WS_MESSAGE_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    match tungstenite::client(request, stream) {
        Ok((socket, _response)) => Ok(Ws { socket }),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => panic!("handshake interrupted"),
    }
}

/// Open a stream and read its `subscribed` message.
pub fn open(addr: SocketAddr, query: &str) -> (Ws, Value) {
    let mut ws = try_open(addr, query, None).expect("WebSocket handshake");
    let ack = ws.next_json();
    assert_eq!(ack["type"], "subscribed", "{ack}");
    (ws, ack)
}

impl Ws {
    /// The next text message as JSON (pings and pongs are skipped).
    #[track_caller]
    pub fn next_json(&mut self) -> Value {
        loop {
            match self.socket.read() {
                Ok(Message::Text(text)) => {
                    return serde_json::from_str(text.as_str())
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
                }
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(other) => panic!("expected a text message, got {other:?}"),
                Err(e) => panic!("reading the stream: {e}"),
            }
        }
    }

    /// The next `n` events.
    #[track_caller]
    pub fn events(&mut self, n: usize) -> Vec<Value> {
        (0..n)
            .map(|_| {
                let e = self.next_json();
                assert_eq!(e["type"], "event", "{e}");
                e
            })
            .collect()
    }

    pub fn send_text(&mut self, text: &str) {
        self.socket.send(Message::text(text)).unwrap();
    }

    /// Read until the server's close frame: its code and reason. Text
    /// messages before it fail the test.
    #[track_caller]
    pub fn expect_close(&mut self) -> (CloseCode, String) {
        loop {
            match self.socket.read() {
                Ok(Message::Close(Some(frame))) => {
                    return (frame.code, frame.reason.as_str().to_string())
                }
                Ok(Message::Close(None)) => return (CloseCode::Status, String::new()),
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(other) => panic!("expected a close, got {other:?}"),
                Err(e) => panic!("expected a close frame, got {e}"),
            }
        }
    }

    /// The stream sends nothing for `quiet`.
    #[track_caller]
    pub fn assert_quiet(&mut self, quiet: Duration) {
        self.socket.get_mut().set_read_timeout(Some(quiet)).unwrap();
        match self.socket.read() {
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            other => panic!("expected silence, got {other:?}"),
        }
        self.socket
            .get_mut()
            .set_read_timeout(Some(WS_MESSAGE_TIMEOUT))
            .unwrap();
    }
}

/// The wal_offset of each event.
pub fn offsets(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["wal_offset"].as_u64().expect("wal_offset"))
        .collect()
}

/// Two states and one event between them, both ways.
pub fn flip(client: &mut RawClient, machine: &str) {
    put_machine(
        client,
        machine,
        json!({
            "states": ["a", "b"],
            "initial": "a",
            "transitions": [
                {"from": "a", "event": "FLIP", "to": "b"},
                {"from": "b", "event": "FLOP", "to": "a"}
            ]
        }),
    );
}

pub fn create(client: &mut RawClient, machine: &str, id: &str) {
    client.ok(
        "CREATE_INSTANCE",
        json!({"machine": machine, "version": 1, "instance_id": id}),
    );
}

/// Apply FLIP or FLOP (whichever the instance's state takes); the
/// acknowledged offset.
pub fn toggle(client: &mut RawClient, id: &str) -> u64 {
    let state = client.ok("GET_INSTANCE", json!({"instance_id": id}))["state"]
        .as_str()
        .unwrap()
        .to_string();
    let event = if state == "a" { "FLIP" } else { "FLOP" };
    let r = client.ok(
        "APPLY_EVENT",
        json!({"instance_id": id, "event": event, "payload": {"n": 1}}),
    );
    r["wal_offset"].as_u64().expect("apply wal_offset")
}
