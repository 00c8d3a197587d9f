//! The database URL and how its connections use TLS, as libpq means
//! `sslmode` and `sslrootcert`:
//!
//! | `sslmode` | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (default) | when the server offers it | not checked |
//! | `require` | always | not checked, unless `sslrootcert` is given: then as `verify-ca` |
//! | `verify-ca` | always | signed by a CA in `sslrootcert` |
//! | `verify-full` | always | signed by a CA in `sslrootcert`, and for the host name connected to |
//!
//! `sslrootcert` is a PEM file of CA certificates (default
//! `~/.postgresql/root.crt`), or `system` for the system's CAs. Both
//! parameters are taken out of the URL here; the rest goes to
//! tokio-postgres, which knows only `disable`, `prefer` and `require`.

use std::path::PathBuf;
use std::str::FromStr;

/// How a connection to PostgreSQL uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Which CAs a server certificate must be signed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// Not checked.
    None,
    /// The system's CAs (`sslrootcert=system`).
    System,
    /// The CA certificates in a PEM file.
    File(PathBuf),
}

/// Why the database URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// A `key=value` string with a key and no value: the key.
    #[error("invalid connection string: {0:?} has no value")]
    NoValue(String),
    /// A `key=value` string with a quote that does not end.
    #[error("invalid connection string: unterminated quote")]
    UnterminatedQuote,
    /// An `sslmode` libpq does not know: as written.
    #[error("sslmode={0:?} is not one of disable, allow, prefer, require, verify-ca, verify-full")]
    SslMode(String),
    /// `verify-ca` or `verify-full` with neither `sslrootcert` nor `~/.postgresql/root.crt`.
    #[error("sslmode=verify-ca and verify-full need the CA certificate: add sslrootcert=/path/to/ca.crt (or sslrootcert=system) to the URL")]
    NoRootCert,
    /// What tokio-postgres refuses in the rest of the URL.
    #[error("{0}")]
    Config(tokio_postgres::Error),
}

/// Why a TLS client cannot be set up from the URL's settings.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The `sslrootcert` file cannot be read.
    #[error("sslrootcert {}: {error}", .path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The `sslrootcert` file is not PEM certificates.
    #[error("sslrootcert {}: {error}", .path.display())]
    Pem {
        path: PathBuf,
        error: native_tls::Error,
    },
    /// The `sslrootcert` file holds no certificate.
    #[error("sslrootcert {}: no PEM certificate in it", .path.display())]
    NoCertificate { path: PathBuf },
    /// The TLS library refused the settings.
    #[error("cannot set up TLS: {0}")]
    Setup(native_tls::Error),
}

/// The TLS settings of the database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub mode: SslMode,
    pub roots: RootCerts,
}

impl Tls {
    /// Whether TLS is asked for at all.
    pub fn wanted(&self) -> bool {
        self.mode != SslMode::Disable
    }

    /// Whether a server without TLS must be refused.
    pub fn required(&self) -> bool {
        !matches!(self.mode, SslMode::Disable | SslMode::Prefer)
    }

    /// The TLS client for these settings.
    pub fn connector(&self) -> Result<native_tls::TlsConnector, TlsError> {
        let mut b = native_tls::TlsConnector::builder();
        match &self.roots {
            RootCerts::None => {
                b.danger_accept_invalid_certs(true);
                b.danger_accept_invalid_hostnames(true);
            }
            RootCerts::System => {}
            RootCerts::File(path) => {
                let pem = std::fs::read(path).map_err(|error| TlsError::Read {
                    path: path.clone(),
                    error,
                })?;
                let certs = native_tls::Certificate::stack_from_pem(&pem).map_err(|error| {
                    TlsError::Pem {
                        path: path.clone(),
                        error,
                    }
                })?;
                if certs.is_empty() {
                    return Err(TlsError::NoCertificate { path: path.clone() });
                }
                b.disable_built_in_roots(true);
                for c in certs {
                    b.add_root_certificate(c);
                }
            }
        }
        if self.mode != SslMode::VerifyFull {
            b.danger_accept_invalid_hostnames(true);
        }
        b.build().map_err(TlsError::Setup)
    }

    /// What a failed TLS handshake means under these settings.
    pub fn explain(&self, error: &str) -> String {
        let what = match self.mode {
            SslMode::VerifyFull => {
                " (sslmode=verify-full: the server's certificate must be signed by a CA in sslrootcert and name the host connected to)"
            }
            SslMode::VerifyCa | SslMode::Require if self.roots != RootCerts::None => {
                " (the server's certificate must be signed by a CA in sslrootcert)"
            }
            _ => "",
        };
        format!("TLS handshake with PostgreSQL failed: {error}{what}")
    }
}

/// The database to stream: its connection settings and TLS, and where what
/// must be written goes.
#[derive(Debug, Clone)]
pub struct Database {
    pub config: tokio_postgres::Config,
    pub tls: Tls,
    /// `--primary-url`: the server that takes writes, when the URL names a
    /// standby to decode on.
    pub primary: Option<Box<Database>>,
}

impl Database {
    /// Parses a `postgres://` URL or a `key=value` connection string.
    pub fn parse(url: &str) -> Result<Database, UrlError> {
        let (rest, mode, root) =
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                take_from_url(url)
            } else {
                take_from_pairs(url)?
            };
        let mode = match mode.as_deref() {
            None | Some("prefer") => SslMode::Prefer,
            Some("disable") => SslMode::Disable,
            Some("allow") => SslMode::Prefer,
            Some("require") => SslMode::Require,
            Some("verify-ca") => SslMode::VerifyCa,
            Some("verify-full") => SslMode::VerifyFull,
            Some(other) => return Err(UrlError::SslMode(other.to_owned())),
        };
        let roots = match root.as_deref() {
            Some("system") => RootCerts::System,
            Some(path) if !path.is_empty() => RootCerts::File(PathBuf::from(path)),
            _ => match mode {
                SslMode::VerifyCa | SslMode::VerifyFull => {
                    let default = std::env::var_os("HOME")
                        .map(|h| PathBuf::from(h).join(".postgresql/root.crt"))
                        .filter(|p| p.exists());
                    match default {
                        Some(p) => RootCerts::File(p),
                        None => return Err(UrlError::NoRootCert),
                    }
                }
                _ => RootCerts::None,
            },
        };
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(UrlError::Config)?;
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        Ok(Database {
            config,
            tls: Tls { mode, roots },
            primary: None,
        })
    }

    /// The same database, whose writes go to `primary`.
    pub fn with_primary(self, primary: Database) -> Database {
        Database {
            primary: Some(Box::new(primary)),
            ..self
        }
    }

    /// Where what must be written goes (the watermarks of `snapshot=1`,
    /// heartbeats, records in `walcast.streams`): `--primary-url` when
    /// given, else the server of the URL that takes writes
    /// (`target_session_attrs=read-write` over its hosts). A URL of one
    /// standby and no `--primary-url` has none: writes fail there, with
    /// PostgreSQL's reason.
    pub fn writes(&self) -> Database {
        match &self.primary {
            Some(p) => (**p).clone(),
            None => {
                let mut config = self.config.clone();
                config.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
                Database {
                    config,
                    tls: self.tls.clone(),
                    primary: None,
                }
            }
        }
    }
}

/// One server a URL names: its host, its port (the one at the same place
/// in the port list, else the first, else 5432) and `host:port` for people.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: tokio_postgres::config::Host,
    pub port: u16,
    pub name: String,
}

impl Database {
    /// The servers the URL names, in its order.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        use tokio_postgres::config::Host;
        let ports = self.config.get_ports();
        self.config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let port = ports
                    .get(i)
                    .or_else(|| ports.first())
                    .copied()
                    .unwrap_or(5432);
                let name = match host {
                    Host::Tcp(h) => format!("{h}:{port}"),
                    Host::Unix(dir) => format!("{}:{port}", dir.display()),
                };
                Endpoint {
                    host: host.clone(),
                    port,
                    name,
                }
            })
            .collect()
    }

    /// Each server the URL names, as `host:port` and a database of that
    /// server alone (same user, password, database and TLS).
    pub fn each_host(&self) -> Vec<(String, Database)> {
        use tokio_postgres::config::Host;
        let c = &self.config;
        self.endpoints()
            .into_iter()
            .map(|Endpoint { host, port, name }| {
                let mut one = tokio_postgres::Config::new();
                match &host {
                    Host::Tcp(h) => one.host(h),
                    Host::Unix(dir) => one.host_path(dir),
                };
                one.port(port).ssl_mode(c.get_ssl_mode());
                if let Some(u) = c.get_user() {
                    one.user(u);
                }
                if let Some(p) = c.get_password() {
                    one.password(p);
                }
                if let Some(d) = c.get_dbname() {
                    one.dbname(d);
                }
                if let Some(a) = c.get_application_name() {
                    one.application_name(a);
                }
                if let Some(t) = c.get_connect_timeout() {
                    one.connect_timeout(*t);
                }
                (
                    name,
                    Database {
                        config: one,
                        tls: self.tls.clone(),
                        primary: self.primary.clone(),
                    },
                )
            })
            .collect()
    }
}

/// Takes `sslmode` and `sslrootcert` out of a URL's query string.
fn take_from_url(url: &str) -> (String, Option<String>, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None, None);
    };
    let (mut mode, mut root) = (None, None);
    let mut kept = form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "sslmode" => mode = Some(v.into_owned()),
            "sslrootcert" => root = Some(v.into_owned()),
            _ => {
                kept.append_pair(&k, &v);
                any = true;
            }
        }
    }
    let rest = if any {
        format!("{base}?{}", kept.finish())
    } else {
        base.to_owned()
    };
    (rest, mode, root)
}

/// Takes `sslmode` and `sslrootcert` out of a `key=value` string (values
/// may be single-quoted, with `\'` and `\\` inside).
fn take_from_pairs(s: &str) -> Result<(String, Option<String>, Option<String>), UrlError> {
    let (mut mode, mut root) = (None, None);
    let mut kept = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(UrlError::NoValue(key));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(UrlError::UnterminatedQuote),
                    Some('\'') => break,
                    Some('\\') => {
                        if let Some(c) = chars.next() {
                            value.push(c);
                        }
                    }
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(c);
            }
        }
        match key.as_str() {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            _ => kept.push(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            )),
        }
    }
    Ok((kept.join(" "), mode, root))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Database {
        match Database::parse(url) {
            Ok(d) => d,
            Err(e) => panic!("{url}: {e}"),
        }
    }

    #[test]
    fn sslmode_and_sslrootcert_are_read_from_both_forms() {
        let d = parse("postgres://u:p@h:5/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x");
        assert_eq!(d.tls.mode, SslMode::VerifyFull);
        assert_eq!(d.tls.roots, RootCerts::File("/tmp/ca.pem".into()));
        assert_eq!(d.config.get_application_name(), Some("x"));
        assert_eq!(d.config.get_user(), Some("u"));
        let d = parse("host=h user='a b' sslmode = verify-ca sslrootcert='/t/c\\'a.pem' dbname=db");
        assert_eq!(d.tls.mode, SslMode::VerifyCa);
        assert_eq!(d.tls.roots, RootCerts::File("/t/c'a.pem".into()));
        assert_eq!(d.config.get_user(), Some("a b"));
        assert_eq!(d.config.get_dbname(), Some("db"));
        let d = parse("postgres://u@h/db");
        assert_eq!(
            (d.tls.mode, d.tls.roots),
            (SslMode::Prefer, RootCerts::None)
        );
        let d = parse("postgres://u@h/db?sslmode=require&sslrootcert=system");
        assert_eq!(
            (d.tls.mode, d.tls.roots),
            (SslMode::Require, RootCerts::System)
        );
        let message = |url: &str| Database::parse(url).err().map(|e| e.to_string());
        assert_eq!(
            message("postgres://u@h/db?sslmode=bogus").as_deref(),
            Some("sslmode=\"bogus\" is not one of disable, allow, prefer, require, verify-ca, verify-full")
        );
        assert_eq!(
            message("host=h sslmode='x").as_deref(),
            Some("invalid connection string: unterminated quote")
        );
        assert_eq!(
            message("host=h port").as_deref(),
            Some("invalid connection string: \"port\" has no value")
        );
    }
}
