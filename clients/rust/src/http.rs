//! The few HTTP requests of the durable stream API (create, list, delete,
//! snapshot pages, re-snapshots): one HTTP/1.1 request per connection, over
//! TLS for `https://`.

use crate::Error;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{HeaderMap, Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Where the proxy is: `http[s]://host[:port][/prefix]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// A path prefix (a proxy mounted under `/rt`), without a trailing `/`.
    pub prefix: String,
}

impl Endpoint {
    /// Parses the proxy's base URL; `ws://` and `wss://` are taken as
    /// `http://` and `https://`.
    pub fn parse(url: &str) -> Result<Endpoint, Error> {
        let invalid = |why: &str| Error::Invalid(format!("{url}: {why}"));
        let (tls, rest) = if let Some(r) = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("wss://"))
        {
            (true, r)
        } else if let Some(r) = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
        {
            (false, r)
        } else {
            return Err(invalid(
                "the proxy's URL starts with http://, https://, ws:// or wss://",
            ));
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() || authority.contains('@') {
            return Err(invalid("no host, or credentials in the URL (use a token)"));
        }
        let default = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| invalid("an IPv6 host without its closing ]"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| invalid("the port is not a number"))?,
            None => default,
        };
        if path.contains(['?', '#']) {
            return Err(invalid("a base URL has no query or fragment"));
        }
        Ok(Endpoint {
            tls,
            host: host.to_owned(),
            port,
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }

    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The websocket URL of `path` (which starts with `/`).
    pub fn ws_url(&self, path: &str) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{}{path}", self.authority(), self.prefix)
    }
}

/// An HTTP answer.
pub(crate) struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// The body as JSON, or `Null`.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Sends one request and reads the whole answer.
pub(crate) async fn request(
    to: &Endpoint,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<Response, Error> {
    let unreachable =
        |e: &dyn std::fmt::Display| Error::Transport(format!("{}:{}: {e}", to.host, to.port));
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{}{path}", to.prefix))
        .header(HOST, to.authority());
    if let Some(t) = token {
        let value = HeaderValue::from_str(&format!("Bearer {t}"))
            .map_err(|_| Error::Invalid("the token is not a valid header value".into()))?;
        req = req.header(AUTHORIZATION, value);
    }
    let payload = match body {
        Some(v) => {
            req = req.header(CONTENT_TYPE, "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    let req = req
        .body(Full::new(payload))
        .map_err(|e| Error::Invalid(format!("{path}: {e}")))?;
    let tcp = TcpStream::connect((to.host.as_str(), to.port))
        .await
        .map_err(|e| unreachable(&e))?;
    if to.tls {
        let connector = tokio_native_tls::native_tls::TlsConnector::new()
            .map(tokio_native_tls::TlsConnector::from)
            .map_err(|e| unreachable(&e))?;
        let stream = connector
            .connect(&to.host, tcp)
            .await
            .map_err(|e| unreachable(&e))?;
        send(stream, req).await.map_err(|e| unreachable(&e))
    } else {
        send(tcp, req).await.map_err(|e| unreachable(&e))
    }
}

async fn send<S>(io: S, req: Request<Full<Bytes>>) -> Result<Response, hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    // The connection is driven beside the request and ends with it.
    let driver = tokio::spawn(conn);
    let res = sender.send_request(req).await;
    let out = match res {
        Ok(res) => {
            let status = res.status().as_u16();
            let headers = res.headers().clone();
            let body = res.into_body().collect().await?.to_bytes();
            Ok(Response {
                status,
                headers,
                body,
            })
        }
        Err(e) => Err(e),
    };
    driver.abort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let e = Endpoint::parse("http://127.0.0.1:8080/").expect("url");
        assert_eq!((e.tls, e.host.as_str(), e.port), (false, "127.0.0.1", 8080));
        assert_eq!(
            e.ws_url("/v1/lr/stream"),
            "ws://127.0.0.1:8080/v1/lr/stream"
        );
        let e = Endpoint::parse("wss://rt.example.com/walcast").expect("url");
        assert_eq!((e.tls, e.port, e.prefix.as_str()), (true, 443, "/walcast"));
        assert_eq!(e.ws_url("/ws"), "wss://rt.example.com/walcast/ws");
        let e = Endpoint::parse("http://[::1]:9000").expect("url");
        assert_eq!((e.host.as_str(), e.port), ("::1", 9000));
        assert_eq!(e.authority(), "[::1]:9000");
        let e = Endpoint::parse("https://[::1]").expect("url");
        assert_eq!((e.host.as_str(), e.port), ("::1", 443));
        assert!(Endpoint::parse("ftp://h").is_err());
        assert!(Endpoint::parse("http://h:x").is_err());
        assert!(Endpoint::parse("http://u:p@h").is_err());
        assert!(Endpoint::parse("http://h/?a=1").is_err());
    }
}
