//! The management subcommands (`tickets`, `components`, `callbacks` on an ADS node's admin
//! API; `jobs`, `devices` on the DMS's EMI API): each is one API call, answered as the API's
//! JSON and as a table for a person. `main.rs` picks which to print.

use reqwest::Method;
use serde_json::{json, Value};

use crate::cli::{
    AdminArgs, CallbacksAction, ComponentsAction, DevicesAction, EmiArgs, JobsAction, PageArgs,
    TicketsAction,
};
use crate::client::{AdminClient, AdminTarget, ClientError};
use crate::table::{self, Column};

/// A command's answer: the API's JSON, and the same for a person.
pub struct Answer {
    pub json: Value,
    pub table: String,
}

/// Why a management command failed.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("--context must be JSON: {0}")]
    BadContext(serde_json::Error),
    #[error("unhealthy: {0}")]
    Unhealthy(String),
}

/// A client for the ADS admin API the flags name (token from `SCOMO_ADS_ADMIN_TOKEN`, else
/// the data directory).
pub fn admin_client(a: &AdminArgs) -> Result<AdminClient, ClientError> {
    let token = std::env::var("SCOMO_ADS_ADMIN_TOKEN").ok();
    let target = AdminTarget::resolve(&a.admin_url, token, &a.data, a.cacert.clone())?;
    AdminClient::new(AdminTarget {
        client_identity: a.client_identity.clone(),
        ..target
    })
}

fn emi_client(e: &EmiArgs) -> Result<AdminClient, ClientError> {
    let token = std::env::var("SCOMO_DMS_API_TOKEN").ok();
    AdminClient::new(AdminTarget::resolve_emi(
        &e.api_url,
        token,
        &e.data,
        e.cacert.clone(),
    )?)
}

/// A URL to borrow `url`'s encoders from (query pairs, path segments).
fn scratch() -> reqwest::Url {
    // A constant that parses: the fallback is never taken.
    reqwest::Url::parse("http://scratch/").unwrap_or_else(|_| unreachable!())
}

/// `?a=1&b=2` of the pairs that are set, encoded as a query (`url`'s form encoding).
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let set: Vec<(&str, &str)> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (*k, v)))
        .collect();
    if set.is_empty() {
        return String::new();
    }
    let mut u = scratch();
    u.query_pairs_mut().extend_pairs(set);
    format!("?{}", u.query().unwrap_or(""))
}

fn page_pairs(p: &PageArgs) -> [(&'static str, Option<String>); 2] {
    [
        ("limit", p.limit.map(|l| l.to_string())),
        ("cursor", p.cursor.clone()),
    ]
}

/// A path segment (an id) percent-encoded.
fn seg(id: &str) -> String {
    let mut u = scratch();
    if let Ok(mut segments) = u.path_segments_mut() {
        segments.clear().push(id);
    }
    u.path().trim_start_matches('/').to_string()
}

fn listed(json: Value, key: &str, columns: &[Column]) -> Answer {
    let items = json[key].as_array().cloned().unwrap_or_default();
    let table = table::list(&items, columns, json["next_cursor"].as_str());
    Answer { json, table }
}

fn shown(json: Value) -> Answer {
    let table = table::object(&json);
    Answer { json, table }
}

const TICKET_COLUMNS: [Column; 7] = [
    Column::new("ID", "/id"),
    Column::new("STATE", "/state"),
    Column::short("COMPONENT", "/component", 12),
    Column::new("DEVICE", "/device_id"),
    Column::new("DELIVERED", "/bytes_delivered"),
    Column::new("SIZE", "/size"),
    Column::new("REQUESTS", "/requests"),
];

/// `scomo-ads tickets ...`
pub async fn tickets(action: &TicketsAction, admin: &AdminArgs) -> Result<Answer, ManageError> {
    let c = admin_client(admin)?;
    Ok(match action {
        TicketsAction::List {
            state,
            component,
            device,
            page,
        } => {
            let mut pairs = vec![
                ("state", state.clone()),
                ("component", component.clone()),
                ("device", device.clone()),
            ];
            pairs.extend(page_pairs(page));
            let v = c
                .call(Method::GET, &format!("/v1/tickets{}", query(&pairs)), None)
                .await?;
            listed(v, "items", &TICKET_COLUMNS)
        }
        TicketsAction::Show { id } => shown(
            c.call(Method::GET, &format!("/v1/tickets/{}", seg(id)), None)
                .await?,
        ),
        TicketsAction::Revoke { id } => shown(
            c.call(Method::DELETE, &format!("/v1/tickets/{}", seg(id)), None)
                .await?,
        ),
    })
}

/// `scomo-ads components ...`
pub async fn components(
    action: &ComponentsAction,
    admin: &AdminArgs,
) -> Result<Answer, ManageError> {
    let c = admin_client(admin)?;
    Ok(match action {
        ComponentsAction::List => listed(
            c.call(Method::GET, "/v1/components", None).await?,
            "components",
            &[
                Column::new("ID", "/id"),
                Column::new("NAME", "/name"),
                Column::new("VERSION", "/version"),
                Column::new("SIZE", "/size"),
                Column::new("CREATED", "/created_at"),
            ],
        ),
        ComponentsAction::Show { id } => shown(
            c.call(Method::GET, &format!("/v1/components/{}", seg(id)), None)
                .await?,
        ),
        ComponentsAction::Delete { id } => {
            c.call(Method::DELETE, &format!("/v1/components/{}", seg(id)), None)
                .await?;
            shown(json!({"deleted": id}))
        }
    })
}

/// `scomo-ads callbacks ...`
pub async fn callbacks(action: &CallbacksAction, admin: &AdminArgs) -> Result<Answer, ManageError> {
    let c = admin_client(admin)?;
    Ok(match action {
        CallbacksAction::List { state, limit } => {
            let q = query(&[
                ("state", state.clone()),
                ("limit", limit.map(|l| l.to_string())),
            ]);
            listed(
                c.call(Method::GET, &format!("/v1/callbacks{q}"), None)
                    .await?,
                "callbacks",
                &[
                    Column::new("EVENT", "/event_id"),
                    Column::new("KIND", "/kind"),
                    Column::new("STATE", "/state"),
                    Column::new("ATTEMPTS", "/attempts"),
                    Column::new("URL", "/url"),
                    Column::short("LAST ERROR", "/last_error", 60),
                ],
            )
        }
        CallbacksAction::Retry { event_id } => shown(
            c.call(
                Method::POST,
                &format!("/v1/callbacks/{}/retry", seg(event_id)),
                None,
            )
            .await?,
        ),
    })
}

/// `scomo-ads jobs ...`
pub async fn jobs(action: &JobsAction, emi: &EmiArgs) -> Result<Answer, ManageError> {
    let c = emi_client(emi)?;
    Ok(match action {
        JobsAction::Create {
            device,
            operation,
            component,
            delivery,
            inventory_first,
        } => {
            let mut body = json!({"device": device, "operation": operation,
                                  "inventory_first": inventory_first});
            if let Some(comp) = component {
                body["component"] = json!(comp);
            }
            if let Some(d) = delivery {
                body["delivery"] = json!(d);
            }
            shown(c.call(Method::POST, "/v1/jobs", Some(&body)).await?)
        }
        JobsAction::List {
            device,
            state,
            result_code,
            page,
        } => {
            let mut pairs = vec![
                ("device", device.clone()),
                ("state", state.clone()),
                ("result_code", result_code.map(|r| r.to_string())),
            ];
            pairs.extend(page_pairs(page));
            listed(
                c.call(Method::GET, &format!("/v1/jobs{}", query(&pairs)), None)
                    .await?,
                "items",
                &[
                    Column::new("ID", "/id"),
                    Column::new("DEVICE", "/device"),
                    Column::new("OPERATION", "/operation"),
                    Column::new("COMPONENT", "/component"),
                    Column::new("STATE", "/state"),
                    Column::new("STAGE", "/stage"),
                    Column::new("RESULT", "/result_code"),
                ],
            )
        }
        JobsAction::Show { id } => {
            let v = c
                .call(Method::GET, &format!("/v1/jobs/{}", seg(id)), None)
                .await?;
            // The timeline reads best as its own table under the job's fields.
            let mut head = v.clone();
            let timeline = head
                .as_object_mut()
                .and_then(|o| o.remove("timeline"))
                .and_then(|t| t.as_array().cloned())
                .unwrap_or_default();
            let mut text = table::object(&head);
            text.push('\n');
            text.push_str(&table::list(
                &timeline,
                &[
                    Column::new("STEP", "/step"),
                    Column::new("AT (ms)", "/at_ms"),
                    Column::new("DETAIL", "/detail"),
                ],
                None,
            ));
            Answer {
                json: v,
                table: text,
            }
        }
    })
}

/// `scomo-ads devices ...`
pub async fn devices(action: &DevicesAction, emi: &EmiArgs) -> Result<Answer, ManageError> {
    let c = emi_client(emi)?;
    Ok(match action {
        DevicesAction::List {
            model,
            firmware,
            seen_since_ms,
            page,
        } => {
            let mut pairs = vec![
                ("model", model.clone()),
                ("firmware", firmware.clone()),
                ("seen_since_ms", seen_since_ms.map(|s| s.to_string())),
            ];
            pairs.extend(page_pairs(page));
            listed(
                c.call(Method::GET, &format!("/v1/devices{}", query(&pairs)), None)
                    .await?,
                "items",
                &[
                    Column::new("ID", "/id"),
                    Column::new("MANUFACTURER", "/devinfo/man"),
                    Column::new("MODEL", "/devinfo/model"),
                    Column::new("FIRMWARE", "/devdetail/fw_v"),
                    Column::new("MECHANISM", "/alternate_mechanism"),
                    Column::new("LAST SESSION (ms)", "/last_session_at_ms"),
                ],
            )
        }
        DevicesAction::Show { id } => shown(
            c.call(Method::GET, &format!("/v1/devices/{}", seg(id)), None)
                .await?,
        ),
        DevicesAction::Provision {
            id,
            password,
            server_password,
            username,
            auth,
            server_auth,
            notify_url,
            alternate_mechanism,
        } => {
            let mut body = json!({"password": password});
            for (k, v) in [
                ("server_password", server_password),
                ("username", username),
                ("auth", auth),
                ("server_auth", server_auth),
                ("notify_url", notify_url),
                ("alternate_mechanism", alternate_mechanism),
            ] {
                if let Some(v) = v {
                    body[k] = json!(v);
                }
            }
            shown(
                c.call(
                    Method::PUT,
                    &format!("/v1/devices/{}", seg(id)),
                    Some(&body),
                )
                .await?,
            )
        }
    })
}

/// `scomo-ads health`: the node at `url` answers 200 `ok` within the timeout. The CA is
/// the one given, else the data directory's generated certificate, else the system's roots.
pub async fn health(h: &crate::cli::HealthArgs) -> Result<(), ManageError> {
    let ca = h.cacert.clone().or_else(|| {
        let p = h.data.join("tls/cert.pem");
        p.exists().then_some(p)
    });
    let http = crate::net::tls::trust(reqwest::Client::builder().use_rustls_tls(), ca.as_slice())
        .map_err(ClientError::from)?
        .timeout(std::time::Duration::from_secs(h.timeout_secs.max(1)))
        .build()
        .map_err(ClientError::from)?;
    let resp = http.get(&h.url).send().await.map_err(ClientError::from)?;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    if status == 200 && body.trim() == "ok" {
        Ok(())
    } else {
        Err(ManageError::Unhealthy(format!(
            "{} answered {status}: {}",
            h.url,
            body.trim()
        )))
    }
}

/// The body of `mint`'s `POST /v1/tickets` from its flags.
pub fn mint_body(m: &crate::cli::MintArgs) -> Result<Value, ManageError> {
    let mut body = json!({"component": m.component_id, "ttl_secs": m.ttl.as_secs()});
    let set = |body: &mut Value, k: &str, v: Option<Value>| {
        if let Some(v) = v {
            body[k] = v;
        }
    };
    set(&mut body, "device_id", m.device_id.clone().map(Value::from));
    set(
        &mut body,
        "callback_url",
        m.callback_url.clone().map(Value::from),
    );
    set(&mut body, "max_bytes", m.max_bytes.map(Value::from));
    set(
        &mut body,
        "max_connections",
        m.max_connections.map(Value::from),
    );
    set(
        &mut body,
        "max_deliveries",
        m.max_deliveries.map(Value::from),
    );
    set(&mut body, "mechanism", m.mechanism.clone().map(Value::from));
    set(
        &mut body,
        "content_type",
        m.content_type.clone().map(Value::from),
    );
    if let Some(ctx) = &m.context {
        let v: Value = serde_json::from_str(ctx).map_err(ManageError::BadContext)?;
        body["context"] = v;
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_carry_only_what_is_set_encoded() {
        assert_eq!(query(&[("a", None)]), "");
        assert_eq!(
            query(&[
                ("device", Some("IMEI:1 2".into())),
                ("x", None),
                ("s", Some("a&b".into()))
            ]),
            "?device=IMEI%3A1+2&s=a%26b"
        );
        assert_eq!(seg("a/b"), "a%2Fb");
    }
}
