//! The OMA Download OTA side of the download plane, for tickets minted with
//! `mechanism: "dlota"`:
//! - `GET|HEAD /dd/{token}`: the ticket's DD 1.0 descriptor, whose `objectURI` is the same
//!   ticket's one-time object URL (`/d/{token}`) and whose `installNotifyURI` is
//!   `/dn/{token}`. Serving it counts nothing: the object URL keeps every rule of one-time
//!   delivery.
//! - `POST /dn/{token}`: the device's status report (`900 Success`, `905 Attribute
//!   mismatch`, ...), authenticated by the token, recorded once and turned into a signed
//!   `download.reported` callback in the same commit.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::{not_allowed, plain, refused, token_after, DownloadBody, DownloadPlane, Found};
use crate::ads::tickets::{Mechanism, ReportOutcome, ReportRefusal};
use crate::dlota::{self, Descriptor, Report};

static DD_CONTENT_TYPE: HeaderValue = HeaderValue::from_static(dlota::CONTENT_TYPE);
const OCTET_STREAM: &str = "application/octet-stream";

impl DownloadPlane {
    /// `GET|HEAD /dd/{token}`.
    pub(super) async fn descriptor<B>(&self, req: &Request<B>) -> Response<DownloadBody> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return not_allowed(
                "GET, HEAD",
                "only GET and HEAD are allowed on descriptors\n",
            );
        }
        let Some(token) = token_after(req.uri().path(), "/dd/") else {
            return plain(
                StatusCode::NOT_FOUND,
                "not a descriptor URL; expected /dd/{token}\n",
            );
        };
        let Found {
            ticket,
            token_expired,
            now,
        } = match self.find(token).await {
            Ok(f) => f,
            Err(r) => return r,
        };
        if ticket.record.mechanism != Mechanism::Dlota {
            return plain(
                StatusCode::NOT_FOUND,
                "this download URL has no descriptor: fetch the object at /d/{token}\n",
            );
        }
        // A descriptor is offered exactly as long as its object is.
        if let Err(r) = self.tickets.check(&ticket, token_expired, now) {
            return refused(r);
        }
        let meta = match self
            .tickets
            .component_meta(&ticket.record.component_id)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "descriptor: component metadata unavailable");
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily unable to describe this download; retry later\n",
                );
            }
        };
        let policy = self.tickets.policy();
        let base = policy
            .public_url
            .as_deref()
            .unwrap_or("")
            .trim_end_matches('/');
        let dd = Descriptor {
            dd_version: Some(dlota::DD_VERSION.into()),
            name: Some(meta.name.clone()),
            object_uri: format!("{base}/d/{token}"),
            size: meta.size,
            types: vec![ticket
                .record
                .content_type
                .clone()
                .unwrap_or_else(|| OCTET_STREAM.into())],
            vendor: Some(policy.node.clone()),
            description: Some(format!("{} {}", meta.name, meta.version)),
            install_notify_uri: Some(format!("{base}/dn/{token}")),
            next_url: None,
            blake3: Some(meta.blake3.clone()),
            sha256: Some(meta.sha256.clone()),
        };
        let xml = Bytes::from(dd.to_xml());
        let length = HeaderValue::from(xml.len());
        let mut resp = Response::new(DownloadBody::text(xml));
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, DD_CONTENT_TYPE.clone());
        h.insert(header::CONTENT_LENGTH, length);
        h.insert(header::CACHE_CONTROL, super::CACHE_CONTROL.clone());
        resp
    }

    /// `POST /dn/{token}`.
    pub(super) async fn install_notify(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> Response<DownloadBody> {
        if req.method() != Method::POST {
            return not_allowed("POST", "install-notify URLs take a POSTed status report\n");
        }
        let Some(token) = token_after(req.uri().path(), "/dn/") else {
            return plain(StatusCode::NOT_FOUND, "not an install-notify URL\n");
        };
        // Who may report is decided before the body is read.
        let Found { ticket, now, .. } = match self.find(token).await {
            Ok(f) => f,
            Err(r) => return r,
        };
        let limited = http_body_util::Limited::new(req.into_body(), dlota::MAX_REPORT_BYTES);
        let body = match limited.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    return plain(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "an install-notify report is one short line, as in \"900 Success\"\n",
                    );
                }
                return plain(StatusCode::BAD_REQUEST, "the report could not be read\n");
            }
        };
        let report = match Report::parse(&body) {
            Ok(r) => r,
            Err(e) => return plain(StatusCode::BAD_REQUEST, format!("{e}\n")),
        };
        match self.tickets.report(&ticket, &report, now).await {
            Ok(ReportOutcome::Recorded) => {
                tracing::info!(ticket = %ticket.record.id.to_hex(), status = report.status, "install-notify report recorded");
                plain(
                    StatusCode::OK,
                    format!("report {} recorded\n", report.status),
                )
            }
            Ok(ReportOutcome::Repeated) => plain(
                StatusCode::OK,
                format!("report {} was already recorded\n", report.status),
            ),
            Err(e @ ReportRefusal::NotDlota) => plain(StatusCode::NOT_FOUND, format!("{e}\n")),
            Err(e @ ReportRefusal::Conflict(_)) => plain(StatusCode::CONFLICT, format!("{e}\n")),
            Err(e @ ReportRefusal::Closed) => plain(StatusCode::GONE, format!("{e}\n")),
            Err(ReportRefusal::Store(e)) => {
                tracing::warn!(error = %e, "install-notify report could not be recorded");
                let mut r = plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily unable to record the report; retry later\n",
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                r
            }
        }
    }
}
