//! TLS to PostgreSQL (`store.tls_ca_file`): the connection is encrypted and the server's
//! certificate verified against that CA and the host name the URL connects to, as libpq's
//! `sslmode=verify-full` does. Without a CA file, no TLS (a Unix socket, a private
//! network); TLS without verification is not offered.
use std::path::Path;

use postgres::{Client, Config, NoTls};
use rustls_pki_types::{pem::PemObject, CertificateDer};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::{Result, StoreError};

/// How connections are made.
#[derive(Clone)]
pub enum Tls {
    Off,
    Verified(MakeRustlsConnect),
}

impl Tls {
    /// TLS verified against the CA certificates (PEM) in `ca`, or none.
    pub fn from_ca_file(ca: Option<&Path>) -> Result<Self> {
        let Some(ca) = ca else {
            return Ok(Self::Off);
        };
        let invalid = |what: String| StoreError::Invalid {
            what: format!("store.tls_ca_file {}: {what}", ca.display()),
        };
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| invalid(e.to_string()))? {
            let cert = cert.map_err(|e| invalid(e.to_string()))?;
            roots.add(cert).map_err(|e| invalid(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(invalid("holds no certificate".into()));
        }
        let provider = tokio_rustls::rustls::crypto::ring::default_provider();
        let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider.into())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self::Verified(MakeRustlsConnect::new(config)))
    }

    pub fn on(&self) -> bool {
        matches!(self, Self::Verified(_))
    }

    /// Connects with `config` (which asks for TLS when it is on: [`Tls::require`]).
    pub fn connect(&self, config: &Config) -> Result<Client, postgres::Error> {
        match self {
            Self::Off => config.connect(NoTls),
            Self::Verified(tls) => config.connect(tls.clone()),
        }
    }

    /// Makes `config` insist on TLS when it is on (a server without TLS is refused).
    pub fn require(&self, config: &mut Config) {
        if self.on() {
            config.ssl_mode(postgres::config::SslMode::Require);
        }
    }
}
