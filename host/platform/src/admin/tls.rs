//! TLS for the admin listener: the deploy API carries the admin token and
//! component code, so beyond a private network it should not travel in
//! clear text. Certificates are PEM files, as cert-manager and most CAs
//! hand them out; a reload needs a restart.

use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS acceptor for the certificate chain in `cert` and the private key
/// in `key` (PEM; PKCS#8, PKCS#1 or SEC1).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the admin TLS certificate {}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!(
            "the admin TLS certificate {} holds no PEM certificate",
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the admin TLS key {}", key.display()))?;
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("setting up TLS")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the admin TLS certificate and key do not belong together")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
