//! The HTTP client of deliveries: hyper's HTTP/1.1 client connection over a
//! glommio `TcpStream` (through the same futures-io → hyper adapter as the
//! server, `crate::http::io::HyperIo`), one connection per attempt, no
//! tokio. Plain `http://` only: a receiver that needs TLS sits behind a
//! local proxy.
//!
//! Bounds: the whole attempt — name lookup, connect, request, answer head
//! and the drained answer body — within `WEBHOOK_REQUEST_TIMEOUT_MS`; at
//! most `WEBHOOK_RESPONSE_BODY_BYTES_MAX` of the answer body is read (and
//! discarded) before the connection is dropped.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use bytes::Bytes;
use futures_lite::future;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::Request;

use super::{WEBHOOK_REQUEST_TIMEOUT_MS, WEBHOOK_RESPONSE_BODY_BYTES_MAX, WEBHOOK_URL_BYTES_MAX};
use crate::http::io::HyperIo;

/// Where deliveries of one webhook go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// `Host` header value: host, and the port when one was written.
    pub authority: String,
    /// Path and query, at least `/`.
    pub path: String,
}

/// Parse an `http://host[:port][/path][?query]` URL.
pub fn parse_url(url: &str) -> Result<Target, String> {
    if url.len() > WEBHOOK_URL_BYTES_MAX {
        return Err(format!("url is longer than {WEBHOOK_URL_BYTES_MAX} bytes"));
    }
    if url.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("url contains spaces or control characters".into());
    }
    let rest = match url.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &url[7..],
        _ if url
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://")) =>
        {
            return Err("https:// is not supported: use an http:// url".into())
        }
        _ => return Err("url must start with http://".into()),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.contains('@') {
        return Err("url must not contain user information".into());
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("url has an unclosed [ in its host")?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("url has no host".into());
    }
    let port = match port {
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("url has a bad port `{p}`"))?,
    };
    Ok(Target {
        host: host.to_string(),
        port,
        authority: authority.to_string(),
        path,
    })
}

/// POST `body` with `headers` to `target`; the answer's status code. An
/// error names what failed (lookup, connect, request, timeout).
pub async fn post(
    target: &Target,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
) -> Result<u16, String> {
    let attempt = attempt(target, headers, body);
    future::or(attempt, async {
        glommio::timer::sleep(Duration::from_millis(WEBHOOK_REQUEST_TIMEOUT_MS)).await;
        Err(format!(
            "no answer within {WEBHOOK_REQUEST_TIMEOUT_MS} ms (WEBHOOK_REQUEST_TIMEOUT_MS)"
        ))
    })
    .await
}

async fn attempt(
    target: &Target,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
) -> Result<u16, String> {
    let addr = resolve(target).await?;
    let stream = glommio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(HyperIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {addr}: {e}"))?;
    let mut request = Request::post(target.path.as_str())
        .header(HOST, target.authority.as_str())
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, concat!("corestate/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(body))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    for (name, value) in headers {
        let value = HeaderValue::from_str(&value).map_err(|e| format!("header {name}: {e}"))?;
        request.headers_mut().insert(name, value);
    }
    let exchange = async {
        let answer = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request to {addr} failed: {e}"))?;
        let status = answer.status().as_u16();
        // Read (and discard) a bounded part of the body, so a receiver that
        // answers at once and keeps writing cannot hold us.
        let mut body = answer.into_body();
        let mut read = 0usize;
        while read <= WEBHOOK_RESPONSE_BODY_BYTES_MAX {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                Some(Err(_)) | None => break,
            }
        }
        Ok(status)
    };
    // The connection is driven beside the exchange; if it ends first, the
    // exchange cannot complete.
    future::or(exchange, async {
        match conn.await {
            Ok(()) => Err(format!("{addr} closed the connection without an answer")),
            Err(e) => Err(format!("connection to {addr}: {e}")),
        }
    })
    .await
}

/// The receiver's address: an IP literal directly, a name on the blocking
/// thread (the system resolver blocks).
async fn resolve(target: &Target) -> Result<SocketAddr, String> {
    if let Ok(ip) = target.host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, target.port));
    }
    let (host, port) = (target.host.clone(), target.port);
    glommio::executor()
        .spawn_blocking(move || {
            (host.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
                .next()
                .ok_or_else(|| format!("{host} has no address"))
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_host_port_and_path() {
        let t = parse_url("http://127.0.0.1:8080/hooks/a?x=1").unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.authority.as_str(),
                t.path.as_str()
            ),
            ("127.0.0.1", 8080, "127.0.0.1:8080", "/hooks/a?x=1")
        );
        let t = parse_url("HTTP://example.com").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        let t = parse_url("http://[::1]:9/?q").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 9, "/?q")
        );
        let t = parse_url("http://h?q=1").unwrap();
        assert_eq!(t.path, "/?q=1");
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        for bad in [
            "https://example.com/",
            "ftp://x/",
            "http://",
            "http://:80/",
            "http://h:0/",
            "http://h:99999/",
            "http://u:p@h/",
            "http://h/a b",
            "example.com",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        let long = format!("http://h/{}", "a".repeat(WEBHOOK_URL_BYTES_MAX));
        assert!(parse_url(&long).unwrap_err().contains("longer"));
    }
}
