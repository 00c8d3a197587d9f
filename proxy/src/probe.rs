//! `walcast-proxy health`: asks a running server for `/healthz`, for
//! container healthchecks (the proxy image carries no curl).
//!
//! It connects to `--listen` (an unspecified address such as `0.0.0.0`
//! means the loopback address of its family), over TLS when `--tls-cert` is
//! set. The server is the proxy's own, on the same host, and nothing secret
//! is sent, so its certificate is not checked: a certificate made for a
//! public name is valid here too.

use crate::config::ListenArgs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// How long the connection and the answer may take in all.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The most of the answer that is read (a `/healthz` body is a few hundred bytes).
const MOST: u64 = 64 * 1024;

/// What the check found: healthy or not, and what to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub healthy: bool,
    pub report: String,
}

/// The address a check of a server listening on `listen` connects to.
pub fn target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Asks the server at `args.listen` for `/healthz`.
pub fn check(args: &ListenArgs) -> Probe {
    let addr = target(args.listen);
    match ask(addr, args.tls_cert.is_some()) {
        Ok(answer) => judge(&answer),
        Err(e) => Probe {
            healthy: false,
            report: format!("no answer from {addr}: {e}"),
        },
    }
}

/// Reads a whole answer to `GET /healthz` from `addr`.
fn ask(addr: SocketAddr, tls: bool) -> Result<String, String> {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if tls {
        let connector = native_tls::TlsConnector::builder()
            .danger_accept_invalid_certs(true)
            .danger_accept_invalid_hostnames(true)
            .build()
            .map_err(|e| e.to_string())?;
        let host = addr.ip().to_string();
        let mut stream = connector
            .connect(&host, stream)
            .map_err(|e| format!("TLS: {e}"))?;
        exchange(&mut stream, &request)
    } else {
        let mut stream = stream;
        exchange(&mut stream, &request)
    }
}

fn exchange(stream: &mut (impl Read + Write), request: &str) -> Result<String, String> {
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream
        .take(MOST)
        .read_to_end(&mut answer)
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Healthy when the status is 200; the report is the status line and the body.
pub fn judge(answer: &str) -> Probe {
    let status_line = answer.lines().next().unwrap_or_default();
    let healthy = status_line.split_whitespace().nth(1) == Some("200");
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim())
        .unwrap_or_default();
    let report = if status_line.is_empty() {
        "an empty answer".to_string()
    } else if body.is_empty() {
        status_line.to_string()
    } else {
        format!("{status_line}: {body}")
    };
    Probe { healthy, report }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_address_is_checked_on_loopback() {
        let v4: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(target(v4), "127.0.0.1:8080".parse().unwrap());
        let v6: SocketAddr = "[::]:9000".parse().unwrap();
        assert_eq!(target(v6), "[::1]:9000".parse().unwrap());
        let given: SocketAddr = "10.1.2.3:80".parse().unwrap();
        assert_eq!(target(given), given);
    }

    #[test]
    fn only_a_200_is_healthy() {
        let ok = judge(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"state\":\"streaming\"}",
        );
        assert_eq!(
            ok,
            Probe {
                healthy: true,
                report: "HTTP/1.1 200 OK: {\"state\":\"streaming\"}".into()
            }
        );
        let down = judge("HTTP/1.1 503 Service Unavailable\r\n\r\n{\"state\":\"connecting\"}");
        assert!(!down.healthy);
        assert_eq!(
            down.report,
            "HTTP/1.1 503 Service Unavailable: {\"state\":\"connecting\"}"
        );
        assert_eq!(judge("").report, "an empty answer");
        assert!(!judge("garbage").healthy);
    }
}
