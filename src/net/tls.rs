//! rustls configuration: TLS 1.2 and 1.3 only, AEAD suites only (ring provider), ALPN `h2` and
//! `http/1.1`. With no certificate configured, a self-signed one for localhost/127.0.0.1 is
//! generated into `DIR/tls/` on first start and reused afterwards, so clients can be told to
//! trust `DIR/tls/cert.pem`.
//!
//! The certificate is served through [`ReloadingCert`]: SIGHUP re-reads the files and new
//! handshakes use the new pair, while established connections keep theirs (nothing is dropped).
//! A listener can also require client certificates from a CA (mutual TLS for the admin API).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::secrets;

/// What can go wrong setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate file {path}: {source}")]
    ReadCert {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("cannot read private key file {path}: {source}")]
    ReadKey {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("certificate file {0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("generating the self-signed certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing the generated certificate failed: {0}")]
    Write(#[from] secrets::SecretError),
    #[error("the certificate and key do not form a usable TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("tls_cert and tls_key must be given together")]
    HalfConfigured,
    #[error("client CA {path} is unusable: {reason}")]
    ClientCa { path: PathBuf, reason: String },
}

/// The server TLS identity in use, and where its certificate lives (for clients to trust).
pub struct TlsIdentity {
    /// Server config without client authentication.
    pub config: Arc<ServerConfig>,
    pub cert_path: PathBuf,
    /// The certificate every config of this identity presents; reload it on SIGHUP.
    pub cert: Arc<ReloadingCert>,
}

impl TlsIdentity {
    /// A server config presenting the same (reloadable) certificate that also requires a
    /// client certificate issued by a CA in `ca_pem`.
    pub fn requiring_clients_of(&self, ca_pem: &Path) -> Result<Arc<ServerConfig>, TlsError> {
        let roots = read_roots(ca_pem)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::ClientCa {
                path: ca_pem.to_path_buf(),
                reason: e.to_string(),
            })?;
        server_config(self.cert.clone(), verifier)
    }
}

/// The one server configuration shape: TLS 1.3 and 1.2 with ring's suites (all AEAD:
/// AES-GCM, ChaCha20-Poly1305; no CBC, no RC4), ALPN h2 then http/1.1, the reloadable
/// certificate, and the given client authentication.
fn server_config(
    cert: Arc<ReloadingCert>,
    clients: Arc<dyn rustls::server::danger::ClientCertVerifier>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(clients)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Every certificate in the PEM file `path`, as trust roots.
fn read_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let read_err = |source| TlsError::ReadCert {
        path: path.to_path_buf(),
        source,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(read_err)? {
        roots.add(cert.map_err(read_err)?)?;
    }
    Ok(roots)
}

/// A certificate and key read from files, swapped in place by [`ReloadingCert::reload`].
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

impl ReloadingCert {
    fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: RwLock::new(Arc::new(read_pair(cert_path, key_path)?)),
        })
    }

    /// Re-reads the files. On any error (a half-written file, a key that does not match the
    /// certificate) the old pair stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(read_pair(&self.cert_path, &self.key_path)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }
}

/// Reloads each certificate whenever the process gets SIGHUP, until `shutdown`.
pub async fn reload_on_sighup(
    certs: Vec<Arc<ReloadingCert>>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; certificates will not reload");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            for c in &certs {
                match c.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %c.cert_path.display(), "TLS certificate reloaded")
                    }
                    Err(e) => tracing::error!(
                        cert = %c.cert_path.display(),
                        error = %e,
                        "TLS certificate reload failed; still serving the previous one"
                    ),
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = certs;
        shutdown.cancelled().await;
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pair(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|source| TlsError::ReadCert {
            path: cert_path.to_path_buf(),
            source,
        })?
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::ReadCert {
            path: cert_path.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert_path.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|source| TlsError::ReadKey {
        path: key_path.to_path_buf(),
        source,
    })?;
    Ok(CertifiedKey::from_der(chain, key, &provider())?)
}

/// Loads the configured certificate and key, or the generated one under `data_dir/tls/`
/// (creating it on first start).
pub fn load_or_generate(
    data_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<TlsIdentity, TlsError> {
    load_or_generate_for(data_dir, cert, key, &[])
}

/// [`load_or_generate`], a generated certificate also naming `names` (host names or IP
/// addresses: the host of the public URL, the names peers use in a compose network).
pub fn load_or_generate_for(
    data_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
    names: &[String],
) -> Result<TlsIdentity, TlsError> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        (None, None) => generate_if_missing(data_dir, names)?,
        _ => return Err(TlsError::HalfConfigured),
    };
    let cert = Arc::new(ReloadingCert::load(&cert_path, &key_path)?);
    Ok(TlsIdentity {
        config: server_config(cert.clone(), WebPkiClientVerifier::no_client_auth())?,
        cert_path,
        cert,
    })
}

/// The host of `url` (`https://ads.example:8443/x` → `ads.example`; IPv6 without brackets),
/// for a generated certificate to name.
pub fn url_host(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed.host_str()?;
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
}

fn generate_if_missing(data_dir: &Path, names: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let dir = data_dir.join("tls");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let mut sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    for n in names {
        // An unspecified address names no host a client could check.
        let unspecified = n
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified());
        if !n.is_empty() && !unspecified && !sans.contains(n) {
            sans.push(n.clone());
        }
    }
    let generated = rcgen::generate_simple_self_signed(sans)?;
    // Key first, so a crash in between leaves no certificate without its key.
    secrets::write_private(&key_path, generated.key_pair.serialize_pem().as_bytes())?;
    secrets::write_public(&cert_path, generated.cert.pem().as_bytes())?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed TLS certificate");
    Ok((cert_path, key_path))
}

/// A rustls client configuration trusting exactly the certificates in `ca_pem` (used by the CLI
/// and tests to talk to a node with a generated certificate).
pub fn client_config_trusting(ca_pem: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let roots = read_roots(ca_pem)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Why extra CA certificates could not be trusted.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read CA certificate {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a PEM CA certificate")]
    NotPem(PathBuf),
    #[error("{0} is not a PEM client certificate with its private key")]
    NotIdentity(PathBuf),
}

/// Makes an HTTP client present the certificate and key in the PEM file `identity` (mutual
/// TLS, for an ADS admin API that requires it).
pub fn present(
    builder: reqwest::ClientBuilder,
    identity: &Path,
) -> Result<reqwest::ClientBuilder, TrustError> {
    let pem = std::fs::read(identity).map_err(|source| TrustError::Read {
        path: identity.to_path_buf(),
        source,
    })?;
    let identity = reqwest::Identity::from_pem(&pem)
        .map_err(|_| TrustError::NotIdentity(identity.to_path_buf()))?;
    Ok(builder.identity(identity))
}

/// Adds each PEM CA certificate in `cas` to an HTTP client's trusted roots (beside the
/// system's): how every client of ours trusts generated self-signed certificates.
pub fn trust(
    mut builder: reqwest::ClientBuilder,
    cas: &[PathBuf],
) -> Result<reqwest::ClientBuilder, TrustError> {
    for ca in cas {
        let pem = std::fs::read(ca).map_err(|source| TrustError::Read {
            path: ca.clone(),
            source,
        })?;
        let cert =
            reqwest::Certificate::from_pem(&pem).map_err(|_| TrustError::NotPem(ca.clone()))?;
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder)
}
