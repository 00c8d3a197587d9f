//! Serving HTTPS and WSS directly (`--tls-cert`, `--tls-key`) with rustls:
//! the certificate chain and key are read at start and again on SIGHUP
//! (a renewed certificate takes effect for new connections without a
//! restart; a reload that fails keeps the old one and says why).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// The certificate files and the acceptor made from them.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<TlsAcceptor>,
}

impl Tls {
    /// Reads the files; an error says which one is wrong.
    pub fn load(cert: PathBuf, key: PathBuf) -> Result<Tls, String> {
        let acceptor = acceptor(&cert, &key)?;
        Ok(Tls {
            cert,
            key,
            current: RwLock::new(acceptor),
        })
    }

    /// Reads the files again; new connections use them from now on.
    pub fn reload(&self) -> Result<(), String> {
        let next = acceptor(&self.cert, &self.key)?;
        *crate::locks::write(&self.current) = next;
        Ok(())
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        crate::locks::read(&self.current).clone()
    }
}

fn acceptor(cert: &PathBuf, key: &PathBuf) -> Result<TlsAcceptor, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: no PEM certificate in it",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("--tls-cert and --tls-key do not make a usable pair: {e}"))?;
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
