//! A plain HTTP/1.1 request to the proxy, for the load tools (no client
//! library: one request per connection is all they need).

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP request with a JSON body; the answer's status and body.
pub async fn request(base: &str, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(host)
        .await
        .with_context(|| format!("connecting to {host}"))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await?;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((
        status,
        answer.split("\r\n\r\n").nth(1).unwrap_or("").to_owned(),
    ))
}
