//! A message's way through the engine: decode, find or start its session, authenticate the
//! device, answer every command with a Status, let the stage machine add its commands, and
//! compose the reply.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use super::inband::InbandDelivery;
use super::{Engine, EngineError};
use crate::dms::job::now_ms;
use crate::syncml::auth;
use crate::syncml::codec::{self, CodecError};
use crate::syncml::codes::{AlertCode, StatusCode};
use crate::syncml::message::*;
use crate::syncml::tree::DevInfo;

/// A command we sent and whose answer decides something for a job.
#[derive(Debug, Clone)]
pub(super) enum Pending {
    GetDetail { job: String },
    GetInventory { job: String },
    Chunk { job: String, last: bool },
    Exec { job: String },
}

/// One DM session with one device.
#[derive(Debug)]
pub(super) struct Session {
    pub(super) device: String,
    pub(super) session_id: String,
    pub(super) authenticated: bool,
    pub(super) next_in: u32,
    pub(super) next_out: u32,
    pub(super) next_cmd: u32,
    pub(super) max_msg: u64,
    pub(super) max_obj: u64,
    pub(super) outstanding: HashMap<u32, Pending>,
    pub(super) delivery: Option<InbandDelivery>,
    pub(super) devinfo_seen: bool,
    pub(super) last_seen: Instant,
    /// Where this message came from: the failed-auth backoff is per device and address, so
    /// a guesser elsewhere cannot lock the real device out.
    pub(super) peer: Option<IpAddr>,
}

impl Session {
    pub(super) fn new(msg: &Message, peer: Option<IpAddr>) -> Self {
        Session {
            device: msg.header.source.uri.clone(),
            session_id: msg.header.session_id.clone(),
            authenticated: false,
            next_in: 1,
            next_out: 1,
            next_cmd: 1,
            max_msg: msg.header.meta.max_msg_size.unwrap_or(16 * 1024),
            max_obj: msg.header.meta.max_obj_size.unwrap_or(1 << 20),
            outstanding: HashMap::new(),
            delivery: None,
            devinfo_seen: false,
            last_seen: Instant::now(),
            peer,
        }
    }

    pub(super) fn cmd_id(&mut self) -> u32 {
        let id = self.next_cmd;
        self.next_cmd += 1;
        id
    }

    /// A `Get` whose answer is remembered as `p`.
    pub(super) fn get(&mut self, uri: &str, p: Pending) -> Command {
        let cmd_id = self.cmd_id();
        self.outstanding.insert(cmd_id, p);
        Command::Get(ItemCommand {
            cmd_id,
            items: vec![Item::target(uri)],
            ..ItemCommand::default()
        })
    }

    /// An `Exec` of `path` for `job`, with the job id as correlator.
    pub(super) fn exec(&mut self, job: &str, path: &str) -> Command {
        let cmd_id = self.cmd_id();
        self.outstanding.insert(
            cmd_id,
            Pending::Exec {
                job: job.to_string(),
            },
        );
        Command::Exec(Exec {
            cmd_id,
            correlator: Some(job.to_string()),
            items: vec![Item::target(path)],
            ..Exec::default()
        })
    }
}

/// The Status answering `cmd`.
fn status_for(cmd: &Command, msg_ref: u32, code: StatusCode) -> Status {
    let target_refs = cmd
        .items()
        .iter()
        .filter_map(|i| i.target.as_ref().map(|t| t.uri.clone()))
        .take(1)
        .collect();
    Status {
        msg_ref,
        cmd_ref: cmd.cmd_id(),
        cmd: cmd.name().to_string(),
        target_refs,
        code: code.code(),
        ..Status::default()
    }
}

fn hdr_status(in_hdr: &Header, code: StatusCode, chal: Option<Meta>) -> Status {
    Status {
        cmd_id: 1,
        msg_ref: in_hdr.msg_id,
        cmd_ref: 0,
        cmd: "SyncHdr".into(),
        target_refs: vec![in_hdr.target.uri.clone()],
        source_refs: vec![in_hdr.source.uri.clone()],
        chal,
        code: code.code(),
        ..Status::default()
    }
}

fn chal(nonce_b64: &str) -> Meta {
    Meta {
        type_: Some(auth::AUTH_MD5.into()),
        format: Some("b64".into()),
        next_nonce: Some(nonce_b64.to_string()),
        ..Meta::default()
    }
}

fn throttle_key(device: &str, peer: Option<IpAddr>) -> String {
    match peer {
        Some(ip) => format!("{device}@{ip}"),
        None => device.to_string(),
    }
}

impl Engine {
    fn header_for(&self, s_id: &str, device: &str, msg_id: u32) -> Header {
        Header {
            session_id: s_id.to_string(),
            msg_id,
            target: Location::uri(device),
            source: Location::uri(&self.cfg.dm_url),
            ..Header::default()
        }
    }

    /// A one-status answer that leaves the session as it was.
    fn error_reply(&self, in_hdr: &Header, code: StatusCode, why: &str) -> String {
        let mut st = hdr_status(in_hdr, code, None);
        st.items = vec![Item::default().with_data(why)];
        let m = Message {
            header: self.header_for(&in_hdr.session_id, &in_hdr.source.uri, 1),
            commands: vec![Command::Status(st)],
            final_: true,
        };
        codec::encode(&m)
    }

    /// Handles one message from a device at `peer`; returns the XML answer.
    pub async fn handle(&self, body: &[u8], peer: Option<IpAddr>) -> Result<String, EngineError> {
        let msg = match codec::decode(body, &self.cfg.limits) {
            Ok(m) => m,
            Err(e) => {
                // The body is bad but perhaps the header is not: answer in SyncML, session
                // untouched, so the device can send a good message next.
                let hdr = codec::decode_header(body, &self.cfg.limits)
                    .map_err(|_| EngineError::Undecodable(e.clone()))?;
                let code = match e {
                    CodecError::TooLarge { .. } => StatusCode::RequestEntityTooLarge,
                    CodecError::UnknownCommand(_) => StatusCode::OptionalFeatureNotSupported,
                    _ => StatusCode::BadRequest,
                };
                tracing::info!(device = %hdr.source.uri, error = %e, "malformed SyncML message");
                return Ok(self.error_reply(&hdr, code, &e.to_string()));
            }
        };
        let device = msg.header.source.uri.clone();
        self.auth_throttle
            .check(&throttle_key(&device, peer))
            .map_err(EngineError::Backoff)?;
        let key = (device.clone(), msg.header.session_id.clone());
        let taken = self.sessions().remove(&key);
        let taken = taken.filter(|s| s.last_seen.elapsed() < self.cfg.session_timeout);
        let mut s = match taken {
            Some(s) => s,
            None if msg.header.msg_id == 1 => Session::new(&msg, peer),
            None => {
                return Ok(self.error_reply(
                    &msg.header,
                    StatusCode::BadRequest,
                    "unknown or expired session; start a new one with MsgID 1",
                ))
            }
        };
        if msg.header.msg_id != s.next_in {
            let why = format!(
                "MsgID {} out of order (expected {})",
                msg.header.msg_id, s.next_in
            );
            let reply = self.error_reply(&msg.header, StatusCode::BadRequest, &why);
            self.sessions().insert(key, s);
            return Ok(reply);
        }
        s.next_in += 1;
        s.last_seen = Instant::now();
        s.peer = peer;
        let result = self.process(&mut s, &msg).await;
        match result {
            Ok((reply, keep)) => {
                if keep {
                    self.sessions().insert(key, s);
                }
                Ok(reply)
            }
            Err(e) => {
                // Keep the session: a storage hiccup should not cost the device its session.
                self.sessions().insert(key, s);
                Err(e)
            }
        }
    }

    async fn authenticate(&self, s: &mut Session, msg: &Message) -> Result<Status, EngineError> {
        let id = s.device.clone();
        let throttle_key = throttle_key(&s.device, s.peer);
        let Some(dev) = self.store.run(move |st| st.device(&id)).await? else {
            // Probing for device ids counts as a failed attempt too.
            self.auth_throttle.failed(&throttle_key);
            return Ok(hdr_status(&msg.header, StatusCode::Forbidden, None));
        };
        let new_nonce = auth::encode_nonce(&auth::new_nonce());
        let (code, ok) = match &msg.header.cred {
            None => (StatusCode::MissingCredentials, false),
            Some(c) => {
                let kind = c.meta.type_.as_deref().unwrap_or(auth::AUTH_BASIC);
                let ok = if kind == auth::AUTH_MD5 {
                    let user = msg.header.source.name.as_deref().unwrap_or(&dev.id);
                    auth::verify_md5(
                        &c.data,
                        user,
                        &dev.password,
                        &auth::decode_nonce(&dev.server_nonce),
                    )
                } else if kind == auth::AUTH_BASIC && (self.cfg.allow_basic || dev.auth == "basic")
                {
                    auth::basic_user(&c.data).is_some_and(|u| {
                        u == dev.id || Some(u.as_str()) == msg.header.source.name.as_deref()
                    }) && auth::verify_basic(
                        &c.data,
                        &auth::basic_user(&c.data).unwrap_or_default(),
                        &dev.password,
                    )
                } else {
                    false
                };
                if ok {
                    (StatusCode::AuthenticationAccepted, true)
                } else {
                    (StatusCode::InvalidCredentials, false)
                }
            }
        };
        // Every answer carries the nonce for the next attempt or session.
        let id = dev.id.clone();
        let nonce = new_nonce.clone();
        self.store
            .run(move |st| {
                st.update_device(&id, |d| {
                    d.server_nonce = nonce;
                    d.last_session_at_ms = Some(now_ms());
                })
            })
            .await?;
        s.authenticated = ok;
        if ok {
            self.auth_throttle.succeeded(&throttle_key);
        } else if code == StatusCode::InvalidCredentials {
            // 407 (no credentials yet) is the normal first step of a challenge, not a guess.
            let backoff = self.auth_throttle.failed(&throttle_key);
            tracing::info!(device = %dev.id, status = code.code(), backoff_ms = backoff.map(|d| d.as_millis() as u64), "device authentication failed");
        }
        Ok(hdr_status(&msg.header, code, Some(chal(&new_nonce))))
    }

    /// Processes a message; returns the answer and whether the session continues.
    async fn process(&self, s: &mut Session, msg: &Message) -> Result<(String, bool), EngineError> {
        let mut statuses: Vec<Status> = Vec::new();
        if s.authenticated {
            statuses.push(hdr_status(&msg.header, StatusCode::Ok, None));
        } else {
            let st = self.authenticate(s, msg).await?;
            statuses.push(st);
            if !s.authenticated {
                // Keep the session for a retry with the new nonce, but not for an unknown
                // device: strangers must not fill the session table.
                let known = statuses
                    .first()
                    .is_some_and(|st| st.code != StatusCode::Forbidden.code());
                let reply = self.compose(s, statuses, Vec::new(), true);
                return Ok((reply, known));
            }
        }
        let msg_ref = msg.header.msg_id;
        let mut end_requested = false;
        for cmd in &msg.commands {
            match cmd {
                Command::Status(st) => self.on_status(s, st).await?,
                Command::Results(r) => self.on_results(s, r).await?,
                Command::Alert(a) => {
                    let code = match AlertCode::from_code(a.code) {
                        Some(AlertCode::Generic) => {
                            self.on_generic_alert(s, a).await?;
                            StatusCode::Ok
                        }
                        Some(AlertCode::SessionAbort) => {
                            end_requested = true;
                            StatusCode::Ok
                        }
                        Some(
                            AlertCode::ServerInitiated
                            | AlertCode::ClientInitiated
                            | AlertCode::NextMessage,
                        ) => StatusCode::Ok,
                        _ => StatusCode::OptionalFeatureNotSupported,
                    };
                    statuses.push(status_for(cmd, msg_ref, code));
                }
                Command::Replace(r) => {
                    if let Some(info) = DevInfo::from_items(&r.items) {
                        let id = s.device.clone();
                        self.store
                            .run(move |st| st.update_device(&id, |d| d.devinfo = Some(info)))
                            .await?;
                        s.devinfo_seen = true;
                    }
                    statuses.push(status_for(cmd, msg_ref, StatusCode::Ok));
                }
                other => statuses.push(status_for(other, msg_ref, StatusCode::CommandNotAllowed)),
            }
        }
        if end_requested {
            return Ok((self.compose(s, statuses, Vec::new(), true), false));
        }
        if !msg.final_ {
            // The device's package continues: ask for its next message.
            let next = Command::Alert(Alert {
                cmd_id: statuses.len() as u32 + 1,
                code: AlertCode::NextMessage.code(),
                ..Alert::default()
            });
            return Ok((self.compose(s, statuses, vec![next], true), true));
        }
        // Every command we sent was answered in this message or never will be.
        s.outstanding.clear();
        s.next_cmd = statuses.len() as u32 + 1;
        let (commands, final_) = self.drive(s).await?;
        let keep = !commands.is_empty() || !s.outstanding.is_empty();
        Ok((self.compose(s, statuses, commands, final_), keep))
    }

    /// Builds the answer: header, statuses (numbered 1..n), then the commands (numbered from
    /// n+1 by the stage machine).
    fn compose(
        &self,
        s: &mut Session,
        statuses: Vec<Status>,
        commands: Vec<Command>,
        final_: bool,
    ) -> String {
        let msg_id = s.next_out;
        s.next_out += 1;
        let mut out: Vec<Command> = statuses
            .into_iter()
            .enumerate()
            .map(|(i, mut st)| {
                st.cmd_id = i as u32 + 1;
                Command::Status(st)
            })
            .collect();
        out.extend(commands);
        let m = Message {
            header: self.header_for(&s.session_id, &s.device, msg_id),
            commands: out,
            final_,
        };
        codec::encode(&m)
    }
}
