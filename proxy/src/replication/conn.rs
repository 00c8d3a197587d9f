//! A PostgreSQL protocol connection in replication mode, on the
//! `postgres-protocol` crate: startup, authentication (trust, password, md5,
//! SCRAM-SHA-256), simple queries, and CopyBoth for `START_REPLICATION`.

use super::error::{ReplicationError, ServerError};
use crate::database::Endpoint;
use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::{Host, TargetSessionAttrs};

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// What arrives from the server.
pub enum Backend {
    /// `CopyBothResponse`: the server switched to streaming.
    CopyBoth,
    /// Any other message.
    Message(Message),
}

/// Bytes read from the server at a time at least.
const READ_CHUNK: usize = 256 << 10;

/// One connection to PostgreSQL.
pub struct Connection {
    stream: Box<dyn Stream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// The server's major version (`server_version` at startup: 15, 16, ...).
    major: u32,
}

/// One row of a simple query's text result.
pub type Row = Vec<Option<String>>;

fn io_err(e: std::io::Error) -> ReplicationError {
    ReplicationError::from(e)
}

impl Connection {
    /// Connects and authenticates; `replication` adds `replication=database`.
    pub async fn connect(
        database: &crate::database::Database,
        replication: bool,
    ) -> Result<Connection, ReplicationError> {
        let config = &database.config;
        let user = config
            .get_user()
            .ok_or_else(|| {
                ReplicationError::definite(
                    "the database URL names no user; add user=... or postgres://user@host/db",
                )
            })?
            .to_owned();
        let dbname = config.get_dbname().unwrap_or(&user).to_owned();
        let endpoints = database.endpoints();
        if endpoints.is_empty() {
            return Err(ReplicationError::definite("the database URL names no host"));
        }
        let attrs = config.get_target_session_attrs();
        // Why each host was passed over, for the error when none fits.
        let mut passed = Vec::new();
        let mut last = None;
        for Endpoint { host, port, name } in &endpoints {
            let port = *port;
            let stream: Result<Box<dyn Stream>, std::io::Error> = match host {
                Host::Tcp(h) => match tokio::net::TcpStream::connect((h.as_str(), port)).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        Ok(negotiate_tls(s, h, &database.tls).await?)
                    }
                    Err(e) => Err(e),
                },
                Host::Unix(dir) => {
                    tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}")))
                        .await
                        .map(|s| Box::new(s) as Box<dyn Stream>)
                }
            };
            match stream {
                Ok(stream) => {
                    let mut conn = Connection {
                        stream,
                        rbuf: BytesMut::with_capacity(64 * 1024),
                        wbuf: BytesMut::new(),
                        major: 0,
                    };
                    conn.startup(
                        &user,
                        &dbname,
                        config.get_password(),
                        replication,
                        config.get_application_name(),
                    )
                    .await?;
                    match conn.session_fits(attrs).await? {
                        None => return Ok(conn),
                        Some(why) => passed.push(format!("{name} {why}")),
                    }
                }
                Err(e) => {
                    passed.push(format!("{name}: {e}"));
                    last = Some(e);
                }
            }
        }
        if endpoints.len() == 1 {
            if let Some(e) = last {
                return Err(io_err(e));
            }
        }
        // Transient: a standby being promoted becomes writable, a server
        // coming back accepts connections.
        Err(ReplicationError::transient(format!(
            "no server in the database URL could be used{}: {}",
            match attrs {
                TargetSessionAttrs::ReadWrite => " (target_session_attrs=read-write)",
                TargetSessionAttrs::ReadOnly => " (target_session_attrs=read-only)",
                _ => "",
            },
            passed.join("; ")
        )))
    }

    /// Whether this session is what `target_session_attrs` asks for, as
    /// libpq judges it (`SHOW transaction_read_only`); `Some(why)` when not.
    async fn session_fits(
        &mut self,
        attrs: TargetSessionAttrs,
    ) -> Result<Option<&'static str>, ReplicationError> {
        let wanted_read_only = match attrs {
            TargetSessionAttrs::ReadWrite => false,
            TargetSessionAttrs::ReadOnly => true,
            _ => return Ok(None),
        };
        let rows = self.simple_query("SHOW transaction_read_only").await?;
        let read_only = rows.first().and_then(|r| r.first().cloned().flatten());
        Ok(
            match (read_only.as_deref() == Some("on"), wanted_read_only) {
                (true, false) => {
                    Some("does not allow writes (a standby, or default_transaction_read_only)")
                }
                (false, true) => Some("is not read-only"),
                _ => None,
            },
        )
    }

    /// The server's major version (15, 16, ...).
    pub fn major(&self) -> u32 {
        self.major
    }

    async fn startup(
        &mut self,
        user: &str,
        dbname: &str,
        password: Option<&[u8]>,
        replication: bool,
        application_name: Option<&str>,
    ) -> Result<(), ReplicationError> {
        let mut params = vec![
            ("user", user),
            ("database", dbname),
            (
                "application_name",
                application_name.unwrap_or("walcast-proxy"),
            ),
            ("client_encoding", "UTF8"),
        ];
        if replication {
            params.push(("replication", "database"));
        }
        frontend::startup_message(params.iter().copied(), &mut self.wbuf).map_err(io_err)?;
        self.flush().await?;
        let need_password = || {
            ReplicationError::definite(
                "the server asks for a password and the database URL has none; add one",
            )
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.read().await? {
                Backend::Message(Message::AuthenticationOk) => {}
                Backend::Message(Message::AuthenticationCleartextPassword) => {
                    let pw = password.ok_or_else(need_password)?;
                    frontend::password_message(pw, &mut self.wbuf).map_err(io_err)?;
                    self.flush().await?;
                }
                Backend::Message(Message::AuthenticationMd5Password(body)) => {
                    let pw = password.ok_or_else(need_password)?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        user.as_bytes(),
                        pw,
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf).map_err(io_err)?;
                    self.flush().await?;
                }
                Backend::Message(Message::AuthenticationSasl(body)) => {
                    let pw = password.ok_or_else(need_password)?;
                    scram = Some(self.scram_start(pw, &body).await?);
                }
                Backend::Message(Message::AuthenticationSaslContinue(body)) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| ReplicationError::definite("unexpected SASL message"))?;
                    s.update(body.data())
                        .map_err(|e| ReplicationError::definite(format!("SCRAM failed: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.wbuf).map_err(io_err)?;
                    self.flush().await?;
                }
                Backend::Message(Message::AuthenticationSaslFinal(body)) => {
                    scram
                        .as_mut()
                        .ok_or_else(|| ReplicationError::definite("unexpected SASL message"))?
                        .finish(body.data())
                        .map_err(|e| {
                            ReplicationError::definite(format!(
                                "the server's SCRAM signature did not verify: {e}"
                            ))
                        })?;
                }
                Backend::Message(Message::ReadyForQuery(_)) => return Ok(()),
                Backend::Message(Message::ParameterStatus(p)) => {
                    if p.name().map_err(io_err)? == "server_version" {
                        // "17.2", "18beta1", "16.4 (Debian 16.4-1.pgdg120+2)".
                        let v = p.value().map_err(io_err)?;
                        let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
                        self.major = digits.parse().unwrap_or(0);
                    }
                }
                Backend::Message(Message::BackendKeyData(_) | Message::NoticeResponse(_)) => {}
                Backend::Message(Message::ErrorResponse(body)) => return Err(server_error(&body)),
                Backend::Message(
                    Message::AuthenticationGss
                    | Message::AuthenticationKerberosV5
                    | Message::AuthenticationSspi
                    | Message::AuthenticationScmCredential,
                ) => return Err(ReplicationError::definite(
                    "the server asks for an authentication method walcast-proxy does not support \
                         (supported: trust, password, md5, scram-sha-256)",
                )),
                _ => {
                    return Err(ReplicationError::transient(
                        "unexpected message during connection startup",
                    ))
                }
            }
        }
    }

    /// Answers the server's SASL offer with SCRAM-SHA-256 (the one
    /// mechanism supported), or says it cannot.
    async fn scram_start(
        &mut self,
        password: &[u8],
        offer: &postgres_protocol::message::backend::AuthenticationSaslBody,
    ) -> Result<ScramSha256, ReplicationError> {
        let mut has_scram = false;
        let mut mechanisms = offer.mechanisms();
        while let Some(m) = mechanisms.next().map_err(io_err)? {
            has_scram |= m == SCRAM_SHA_256;
        }
        if !has_scram {
            return Err(ReplicationError::definite(
                "the server offers no SASL mechanism walcast-proxy supports (SCRAM-SHA-256)",
            ));
        }
        let s = ScramSha256::new(password, ChannelBinding::unsupported());
        frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.wbuf)
            .map_err(io_err)?;
        self.flush().await?;
        Ok(s)
    }

    /// Writes the buffered messages. Cancel-safe: what was written is
    /// removed from the buffer as it goes, so a flush interrupted by a
    /// `select!` resumes where it stopped instead of writing bytes twice.
    async fn flush(&mut self) -> Result<(), ReplicationError> {
        while !self.wbuf.is_empty() {
            let n = self.stream.write(&self.wbuf).await.map_err(io_err)?;
            if n == 0 {
                return Err(ReplicationError::transient(
                    "PostgreSQL closed the connection",
                ));
            }
            self.wbuf.advance(n);
        }
        self.stream.flush().await.map_err(io_err)
    }

    /// Reads the next backend message.
    pub async fn read(&mut self) -> Result<Backend, ReplicationError> {
        loop {
            if self.rbuf.len() >= 5 {
                let len =
                    u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]])
                        as usize;
                if len < 4 {
                    return Err(ReplicationError::transient(
                        "malformed message from the server",
                    ));
                }
                if self.rbuf.len() > len {
                    if self.rbuf[0] == b'W' {
                        self.rbuf.advance(1 + len);
                        return Ok(Backend::CopyBoth);
                    }
                    if let Some(m) = Message::parse(&mut self.rbuf).map_err(io_err)? {
                        return Ok(Backend::Message(m));
                    }
                } else {
                    self.rbuf.reserve(len + 1 - self.rbuf.len());
                }
            }
            // Read in large pieces: messages handed out keep their piece
            // alive, so a small spare room would mean small reads and copies.
            if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 8 {
                self.rbuf.reserve(READ_CHUNK);
            }
            let n = self.stream.read_buf(&mut self.rbuf).await.map_err(io_err)?;
            if n == 0 {
                return Err(ReplicationError::transient(
                    "PostgreSQL closed the connection",
                ));
            }
        }
    }

    /// Runs a simple query and returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, ReplicationError> {
        frontend::query(sql, &mut self.wbuf).map_err(io_err)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.read().await? {
                Backend::Message(Message::DataRow(body)) => {
                    let buf = body.buffer();
                    let mut row = Vec::new();
                    let mut ranges = body.ranges();
                    while let Some(r) = ranges.next().map_err(io_err)? {
                        row.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    rows.push(row);
                }
                Backend::Message(Message::ErrorResponse(body)) => error = Some(server_error(&body)),
                Backend::Message(Message::ReadyForQuery(_)) => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    }
                }
                _ => {}
            }
        }
    }

    /// Sends a command that answers with CopyBothResponse (START_REPLICATION).
    pub async fn start_copy_both(&mut self, sql: &str) -> Result<(), ReplicationError> {
        frontend::query(sql, &mut self.wbuf).map_err(io_err)?;
        self.flush().await?;
        loop {
            match self.read().await? {
                Backend::CopyBoth => return Ok(()),
                Backend::Message(Message::ErrorResponse(body)) => {
                    let e = server_error(&body);
                    // Drain to ReadyForQuery so the connection stays usable.
                    while !matches!(
                        self.read().await?,
                        Backend::Message(Message::ReadyForQuery(_))
                    ) {}
                    return Err(e);
                }
                _ => {}
            }
        }
    }

    /// The next CopyData payload; `None` when the server ended the copy.
    pub async fn read_copy_data(&mut self) -> Result<Option<Bytes>, ReplicationError> {
        loop {
            match self.read().await? {
                Backend::Message(Message::CopyData(body)) => return Ok(Some(body.into_bytes())),
                Backend::Message(Message::CopyDone) => return Ok(None),
                Backend::Message(Message::ErrorResponse(body)) => return Err(server_error(&body)),
                Backend::Message(Message::NoticeResponse(_) | Message::ParameterStatus(_)) => {}
                _ => {
                    return Err(ReplicationError::transient(
                        "unexpected message while streaming",
                    ))
                }
            }
        }
    }

    /// Sends one CopyData message.
    pub async fn send_copy_data(&mut self, data: &[u8]) -> Result<(), ReplicationError> {
        frontend::CopyData::new(data)
            .map_err(io_err)?
            .write(&mut self.wbuf);
        self.flush().await
    }

    /// Ends the copy from our side and closes the connection politely.
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        frontend::copy_done(&mut self.wbuf);
        frontend::terminate(&mut self.wbuf);
        self.flush().await
    }
}

/// Asks the server for TLS unless `sslmode=disable`, as libpq does:
/// `prefer` falls back to plain text when the server declines, stricter
/// modes fail; the certificate is checked as `database.rs` says.
async fn negotiate_tls(
    mut tcp: tokio::net::TcpStream,
    host: &str,
    tls: &crate::database::Tls,
) -> Result<Box<dyn Stream>, ReplicationError> {
    if !tls.wanted() {
        return Ok(Box::new(tcp));
    }
    let mut req = BytesMut::new();
    frontend::ssl_request(&mut req);
    tcp.write_all(&req).await.map_err(io_err)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(io_err)?;
    if answer[0] != b'S' {
        if tls.required() {
            return Err(ReplicationError::definite(
                "the sslmode needs TLS but the server does not accept TLS connections; enable ssl in postgresql.conf",
            ));
        }
        return Ok(Box::new(tcp));
    }
    let connector = tls
        .connector()
        .map_err(|e| ReplicationError::definite(e.to_string()))?;
    let stream = tokio_native_tls::TlsConnector::from(connector)
        .connect(host, tcp)
        .await
        .map_err(|e| ReplicationError::transient(tls.explain(&e.to_string())))?;
    Ok(Box::new(stream))
}

fn server_error(body: &postgres_protocol::message::backend::ErrorResponseBody) -> ReplicationError {
    let mut e = ServerError::default();
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            b'H' => e.hint = Some(v),
            b'R' => e.routine = Some(v),
            _ => {}
        }
    }
    ReplicationError::from_server(&e)
}
