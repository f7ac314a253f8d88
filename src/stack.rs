//! ADS + DMS wired together in one process (what `up` and `demo` run): the DMS's certificate
//! is made first so the ADS trusts it for callbacks, then the ADS, then the DMS configured with
//! the ADS as its alternate download node.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::ads::{AdsError, AdsHandle};
use crate::config::{AdsConfig, AdsNodeConfig, DmsConfig};
use crate::dms::{DmsError, DmsHandle};

/// Why the stack could not start.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("ADS: {0}")]
    Ads(#[from] AdsError),
    #[error("DMS: {0}")]
    Dms(#[from] DmsError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::net::tls::TlsError),
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
}

/// Where the ADS of a stack keeps its data: `root` itself, the layout of `serve --data root`,
/// so a node started with `serve` and later with `up` (or the other way round) is the same
/// node. A data directory from before, with the ADS under `root/ads`, keeps that.
pub fn ads_dir(root: &Path) -> std::path::PathBuf {
    let legacy = root.join("ads");
    if legacy.join("ads.sqlite3").exists() {
        legacy
    } else {
        root.to_path_buf()
    }
}

/// Starts the ADS in [`ads_dir`] (`root`, as `serve` lays it out) and the DMS under
/// `root/dms`, the DMS using the ADS.
/// `ads` and `dms` carry everything else (listen addresses, secrets from the environment).
pub async fn start(
    root: &Path,
    mut ads: AdsConfig,
    mut dms: DmsConfig,
    shutdown: CancellationToken,
) -> Result<(AdsHandle, DmsHandle), StackError> {
    let ads_dir = ads_dir(root);
    let dms_dir = root.join("dms");
    std::fs::create_dir_all(&dms_dir).map_err(|source| DmsError::DataDir {
        path: dms_dir.clone(),
        source,
    })?;
    let dms_tls = crate::net::tls::load_or_generate_for(
        &dms_dir,
        dms.tls_cert.as_deref(),
        dms.tls_key.as_deref(),
        &dms.certificate_names(),
    )?;
    ads.data_dir = ads_dir.clone();
    // The DMS verifies callbacks with the node's secret file: a secret given through the
    // environment is handed over the same way (mode 0600), or every callback would fail.
    if let Some(secret) = &ads.callback_secret {
        let _ = std::fs::create_dir_all(&ads_dir);
        crate::secrets::write_private(&ads_dir.join("callback.secret"), secret.0.as_bytes())?;
    }
    ads.callback_ca_certs.push(dms_tls.cert_path.clone());
    let node = crate::ads::start(ads, shutdown.clone()).await?;
    dms.data_dir = dms_dir;
    dms.ads_nodes.push(AdsNodeConfig {
        name: "edge-1".into(),
        admin_url: node.admin_url.clone(),
        admin_token_file: ads_dir.join("admin.token"),
        callback_secret_file: ads_dir.join("callback.secret"),
        ca_cert: Some(node.cert_path.clone()),
        client_identity: None,
        weight: 1,
    });
    // With SCOMO_ADS_ADMIN_TOKEN set, the token file is not written: hand it over directly.
    if !ads_dir.join("admin.token").exists() {
        let _ = crate::secrets::write_private(
            &ads_dir.join("admin.token"),
            node.admin_token.as_bytes(),
        );
    }
    let d = crate::dms::start(dms, shutdown).await?;
    Ok((node, d))
}
