//! Serving HTTPS and WSS directly (`--tls-cert`, `--tls-key`) with rustls:
//! the certificate chain and key are read at start and again on SIGHUP
//! (a renewed certificate takes effect for new connections without a
//! restart; a reload that fails keeps the old one and says why).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Why the certificate files do not make a TLS server; the message says
/// which file is wrong.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// `--tls-cert` cannot be read as PEM.
    #[error("--tls-cert {}: {error}", .path.display())]
    Cert { path: PathBuf, error: pem::Error },
    /// `--tls-cert` holds no certificate.
    #[error("--tls-cert {}: no PEM certificate in it", .path.display())]
    NoCert { path: PathBuf },
    /// `--tls-key` holds no usable private key.
    #[error("--tls-key {}: {error}", .path.display())]
    Key { path: PathBuf, error: pem::Error },
    /// rustls refused its own defaults.
    #[error("TLS setup: {0}")]
    Setup(rustls::Error),
    /// The key is not the certificate's, or rustls cannot use them.
    #[error("--tls-cert and --tls-key do not make a usable pair: {0}")]
    Pair(rustls::Error),
}

/// The certificate files and the acceptor made from them.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<TlsAcceptor>,
}

impl Tls {
    /// Reads the files; an error says which one is wrong.
    pub fn load(cert: PathBuf, key: PathBuf) -> Result<Tls, CertError> {
        let acceptor = acceptor(&cert, &key)?;
        Ok(Tls {
            cert,
            key,
            current: RwLock::new(acceptor),
        })
    }

    /// Reads the files again; new connections use them from now on.
    pub fn reload(&self) -> Result<(), CertError> {
        let next = acceptor(&self.cert, &self.key)?;
        *crate::locks::write(&self.current) = next;
        Ok(())
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        crate::locks::read(&self.current).clone()
    }
}

fn acceptor(cert: &PathBuf, key: &PathBuf) -> Result<TlsAcceptor, CertError> {
    let bad_cert = |error| CertError::Cert {
        path: cert.clone(),
        error,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(bad_cert)?
        .collect::<Result<_, _>>()
        .map_err(bad_cert)?;
    if chain.is_empty() {
        return Err(CertError::NoCert { path: cert.clone() });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|error| CertError::Key {
        path: key.clone(),
        error,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(CertError::Setup)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(CertError::Pair)?;
    // Websockets upgrade over HTTP/1.1, the only protocol served.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Reloads `tls` on every SIGHUP until the process ends.
pub async fn reload_on_sighup(tls: Arc<Tls>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot watch SIGHUP: the TLS certificate will not be reloaded");
            return;
        };
        while hup.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded, keeping the old one")
                }
            }
        }
    }
    #[cfg(not(unix))]
    drop(tls);
}
