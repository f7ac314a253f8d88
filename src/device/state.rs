//! What a device remembers between runs: its DM tree, the nonces of both directions, the
//! operation results it still has to report, and the fault injections already spent. Written
//! atomically (temp file + rename) after every session.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::syncml::tree::Tree;

/// A SCOMO result waiting to be reported in a Generic Alert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingReport {
    pub correlator: Option<String>,
    /// The Operations node that was Exec'd.
    pub source: String,
    pub target: Option<String>,
    pub result: u16,
    pub identifier: Option<String>,
}

/// The persisted state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeviceState {
    pub tree: Tree,
    /// Nonce for our MD5 credentials (b64), from the server's last Chal.
    pub server_nonce: String,
    /// Nonce the server uses toward us (package 0 digest), b64.
    pub client_nonce: String,
    pub pending_reports: Vec<PendingReport>,
    /// Connection drops injected so far (the fault fires once).
    pub drops_done: u32,
}

impl DeviceState {
    pub fn load(path: &Path) -> std::io::Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
    }
}
