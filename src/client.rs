//! A small client for the ADS admin API and the DMS's EMI API (both bearer-token JSON over
//! HTTPS), used by `publish`, `mint` and the management commands (`tickets`, `jobs`, ...),
//! and by integration tests, which thereby drive exactly what the CLI drives.

use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::ads::store::ComponentMeta;
use crate::ads::tickets::Minted;

/// Admin client failures, with what the server said when it said something.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a regular file: publish uploads one file")]
    NotAFile(PathBuf),
    #[error("no {what} token: set {env} or point --data at the directory holding {file}")]
    NoToken {
        what: &'static str,
        env: &'static str,
        file: &'static str,
    },
    #[error("request to the admin API failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("the admin API answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error(transparent)]
    Trust(#[from] crate::net::tls::TrustError),
}

/// Where an API's token comes from when it is not given.
struct TokenSource {
    what: &'static str,
    env: &'static str,
    file: &'static str,
    /// The service's directory inside `up`'s data directory.
    subdir: &'static str,
}

const ADMIN_API: TokenSource = TokenSource {
    what: "admin",
    env: "SCOMO_ADS_ADMIN_TOKEN",
    file: "admin.token",
    subdir: "ads",
};

const EMI_API: TokenSource = TokenSource {
    what: "EMI API",
    env: "SCOMO_DMS_API_TOKEN",
    file: "api.token",
    subdir: "dms",
};

/// Where the admin API is and how to authenticate to it.
#[derive(Clone, Debug)]
pub struct AdminTarget {
    pub url: String,
    pub token: String,
    /// Extra CA certificate to trust (the node's generated self-signed certificate).
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate + key, for a node whose admin API requires mutual TLS.
    pub client_identity: Option<PathBuf>,
}

impl AdminTarget {
    /// The ADS admin API: the token and CA from explicit values or the node's data directory
    /// (`serve --data DIR` or `up --data DIR`; `DIR/ads` of an older `up`).
    pub fn resolve(
        url: &str,
        token: Option<String>,
        data_dir: &Path,
        ca_cert: Option<PathBuf>,
    ) -> Result<Self, ClientError> {
        Self::resolve_for(&ADMIN_API, url, token, data_dir, ca_cert)
    }

    /// The DMS's EMI API: the token and CA from explicit values or the DMS's data directory
    /// (`dms --data DIR`, or `DIR/dms` of `up --data DIR`).
    pub fn resolve_emi(
        url: &str,
        token: Option<String>,
        data_dir: &Path,
        ca_cert: Option<PathBuf>,
    ) -> Result<Self, ClientError> {
        Self::resolve_for(&EMI_API, url, token, data_dir, ca_cert)
    }

    fn resolve_for(
        api: &TokenSource,
        url: &str,
        token: Option<String>,
        data_dir: &Path,
        ca_cert: Option<PathBuf>,
    ) -> Result<Self, ClientError> {
        let nested = data_dir.join(api.subdir);
        Self::resolve_in(url, token, &[data_dir, &nested], api.file, ca_cert).ok_or(
            ClientError::NoToken {
                what: api.what,
                env: api.env,
                file: api.file,
            },
        )
    }

    /// The first of `dirs` holding `token_file` (or the explicit token) gives the token, and
    /// its `tls/cert.pem` the CA unless one is given.
    fn resolve_in(
        url: &str,
        token: Option<String>,
        dirs: &[&Path],
        token_file: &str,
        ca_cert: Option<PathBuf>,
    ) -> Option<Self> {
        let from_file = |d: &&Path| {
            std::fs::read_to_string(d.join(token_file))
                .ok()
                .map(|s| (s.trim().to_string(), d.to_path_buf()))
        };
        let (token, dir) = match token.filter(|t| !t.is_empty()) {
            Some(t) => (
                t,
                dirs.iter()
                    .find(|d| d.join("tls/cert.pem").exists())
                    .map(|d| d.to_path_buf()),
            ),
            None => {
                let (t, d) = dirs.iter().find_map(from_file)?;
                (t, Some(d))
            }
        };
        let ca_cert = ca_cert.or_else(|| {
            let p = dir?.join("tls/cert.pem");
            p.exists().then_some(p)
        });
        Some(Self {
            url: url.trim_end_matches('/').to_string(),
            token,
            ca_cert,
            client_identity: None,
        })
    }
}

/// The admin API client.
pub struct AdminClient {
    target: AdminTarget,
    http: reqwest::Client,
}

impl AdminClient {
    pub fn new(target: AdminTarget) -> Result<Self, ClientError> {
        let mut builder = crate::net::tls::trust(
            reqwest::Client::builder().use_rustls_tls(),
            target.ca_cert.as_slice(),
        )?;
        if let Some(identity) = &target.client_identity {
            builder = crate::net::tls::present(builder, identity)?;
        }
        Ok(Self {
            target,
            http: builder.build()?,
        })
    }

    async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, ClientError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp.json().await?);
        }
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or(text);
        Err(ClientError::Api {
            status: status.as_u16(),
            message,
        })
    }

    /// Uploads `file` as component `name`/`version`, calling `progress(sent, total)` as the
    /// bytes leave.
    pub async fn publish(
        &self,
        file: &Path,
        name: &str,
        version: &str,
        progress: impl Fn(u64, u64) + Send + Sync + 'static,
    ) -> Result<ComponentMeta, ClientError> {
        let read_err = |source| ClientError::Read {
            path: file.to_path_buf(),
            source,
        };
        let f = tokio::fs::File::open(file).await.map_err(read_err)?;
        let meta = f.metadata().await.map_err(read_err)?;
        if !meta.is_file() {
            // A directory opens fine and fails only mid-upload, as an opaque stream error.
            return Err(ClientError::NotAFile(file.to_path_buf()));
        }
        let total = meta.len();
        let mut sent = 0u64;
        let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024).map(move |chunk| {
            if let Ok(c) = &chunk {
                sent += c.len() as u64;
                progress(sent, total);
            }
            chunk
        });
        let resp = self
            .http
            .post(format!("{}/v1/components", self.target.url))
            .query(&[("name", name), ("version", version)])
            .bearer_auth(&self.target.token)
            .header(reqwest::header::CONTENT_LENGTH, total)
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await?;
        Self::decode(resp).await
    }

    /// Mints a ticket for `component`.
    pub async fn mint(
        &self,
        component: &str,
        ttl_secs: u64,
        device_id: Option<&str>,
    ) -> Result<Minted, ClientError> {
        let mut body = serde_json::json!({"component": component, "ttl_secs": ttl_secs});
        if let Some(d) = device_id {
            body["device_id"] = serde_json::Value::from(d);
        }
        self.mint_with(&body).await
    }

    /// Mints a ticket from a whole `POST /v1/tickets` body (every option the API takes).
    pub async fn mint_with(&self, body: &serde_json::Value) -> Result<Minted, ClientError> {
        let resp = self
            .http
            .post(format!("{}/v1/tickets", self.target.url))
            .bearer_auth(&self.target.token)
            .json(body)
            .send()
            .await?;
        Self::decode(resp).await
    }

    /// One API call: `method` on `path` (with its query already in it), an optional JSON
    /// body; the JSON answer (`null` for an empty one, as a 204 has).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.target.url))
            .bearer_auth(&self.target.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(serde_json::Value::Null);
        }
        Self::decode(resp).await
    }
}
