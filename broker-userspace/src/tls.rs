//! Server certificates (TIC's `starttls`, the API's HTTPS): PEM files loaded into a
//! rustls server config. Loaded once when the configuration is checked (so a bad file
//! fails `broker config check` and the start, naming the key) and again when the server
//! starts.
use std::{path::Path, sync::Arc};

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {source}")]
    Certificate {
        path: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error("cannot read a private key from {path}: {source}")]
    Key {
        path: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("the key does not suit the certificate: {source}")]
    Mismatch {
        #[source]
        source: rustls::Error,
    },
}

impl TlsError {
    /// The configuration key at fault, under `section` (`tic`, `api.tls`).
    pub fn key(&self, section: &str) -> String {
        match self {
            TlsError::Certificate { .. } | TlsError::NoCertificate { .. } => {
                format!("{section}.certificate")
            }
            TlsError::Key { .. } | TlsError::Mismatch { .. } => format!("{section}.key"),
        }
    }
}

/// Reads the chain and key and builds the server side of TLS (ring; TLS 1.2 and 1.3).
///
/// No TLS 1.3 session tickets: today's GnuTLS negotiates 1.3 with aiccu, and a ticket
/// arriving before TIC's next reply makes its record read return `GNUTLS_E_AGAIN`, which
/// aiccu 2007.01.15 stores in an unsigned length and then gives up on the connection.
/// aiccu never resumes a session, so the tickets bought nothing (nor do they for the
/// API's one request per connection).
pub fn load(certificate: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let shown = |p: &Path| p.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|source| TlsError::Certificate {
            path: shown(certificate),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: shown(certificate),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: shown(key),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Mismatch { source })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Mismatch { source })?;
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("broker-tic-tls-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn missing_and_empty_files_name_their_key() {
        let d = dir();
        let e = load(&d.join("nope.pem"), &d.join("nope.key")).unwrap_err();
        assert_eq!(e.key("tic"), "tic.certificate", "{e}");
        let empty = d.join("empty.pem");
        std::fs::write(&empty, "not a pem file\n").unwrap();
        let e = load(&empty, &d.join("nope.key")).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
        assert_eq!(e.key("api.tls"), "api.tls.certificate");
    }
}
