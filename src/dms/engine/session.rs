//! A message's way through the engine: decode, find or start its session (bound to its
//! RespURI key), authenticate the device ([`auth`](super::auth)), answer every command with a
//! Status, let the stage machine add its commands, and compose the reply, bounded in messages
//! and in repetitions of one command.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Instant;

use super::auth::{throttle_key, ServerAuth};
use super::inband::InbandDelivery;
use super::reads::{Read, Walk};
use super::{Engine, EngineError};
use crate::dms::job::{NodeWrite, Step};
use crate::syncml::codec::CodecError;
use crate::syncml::codes::{AlertCode, StatusCode};
use crate::syncml::message::*;
use crate::syncml::tree::DevInfo;
use crate::syncml::Encoding;

/// A command we sent and whose answer decides something for a job.
#[derive(Debug, Clone)]
pub(super) enum Pending {
    /// A read of DevDetail or the inventory (`?list=StructData`).
    Read {
        job: String,
        what: Read,
    },
    /// One node of a walk (see [`reads`](super::reads)).
    WalkGet {
        job: String,
    },
    /// A node write (see [`writes`](super::writes)); `replace` after a 418 to its `Add`.
    Write {
        job: String,
        write: NodeWrite,
        replace: bool,
    },
    Chunk {
        job: String,
        last: bool,
    },
    Exec {
        job: String,
    },
}

impl Pending {
    pub(super) fn job(&self) -> &str {
        match self {
            Pending::Read { job, .. }
            | Pending::WalkGet { job }
            | Pending::Write { job, .. }
            | Pending::Chunk { job, .. }
            | Pending::Exec { job } => job,
        }
    }
}

/// A job's node writes in this session.
#[derive(Debug, Default)]
pub(super) struct WriteBatch {
    /// Writes sent and not answered yet.
    pub(super) awaiting: usize,
    /// Leaves the device already had (418 to `Add`): to be replaced.
    pub(super) replaces: Vec<NodeWrite>,
    /// The first refused write and the device's status.
    pub(super) failed: Option<(String, u16)>,
}

/// One DM session with one device.
#[derive(Debug)]
pub(super) struct Session {
    /// The encoding the device speaks (its first message's); every answer uses it.
    pub(super) encoding: Encoding,
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
    /// Reads done node by node, oldest first.
    pub(super) walks: VecDeque<Walk>,
    /// Node writes per job, as the device answers them.
    pub(super) writes: HashMap<String, WriteBatch>,
    pub(super) devinfo_seen: bool,
    pub(super) last_seen: Instant,
    /// Where this message came from: failed authentications count toward its backoff.
    pub(super) peer: Option<IpAddr>,
    /// How we authenticate to the device, with its server password and the nonce it gave us
    /// (read with the device record when it authenticates).
    pub(super) server_auth: ServerAuth,
    /// The commands of our last message and whether it was final: sent again, with fresh
    /// credentials, when the device refuses our header.
    pub(super) last_commands: Vec<Command>,
    pub(super) last_final: bool,
    /// Times in a row the device refused our credentials.
    pub(super) server_auth_refusals: u32,
    /// Messages received in this session, and those expected beyond the cap (chunks).
    pub(super) messages: u32,
    pub(super) expected_messages: u32,
    /// How often each command (name and target) was sent in this session.
    pub(super) sent: HashMap<String, u32>,
    /// The unguessable key of this session's RespURI (128 bits, hex): a message continues the
    /// session only at that URI or with valid credentials, never by naming the device and a
    /// 16-bit SessionID alone.
    pub(super) key: String,
}

/// Times one command (same name, same target) may be sent in a session: a device that never
/// answers it does not get it forever.
const MAX_REPEATS: u32 = 3;

impl Session {
    pub(super) fn new(msg: &Message, peer: Option<IpAddr>, encoding: Encoding) -> Self {
        Session {
            encoding,
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
            walks: VecDeque::new(),
            writes: HashMap::new(),
            devinfo_seen: false,
            last_seen: Instant::now(),
            peer,
            server_auth: ServerAuth::default(),
            last_commands: Vec::new(),
            last_final: true,
            server_auth_refusals: 0,
            messages: 0,
            expected_messages: 0,
            sent: HashMap::new(),
            key: format!("{:032x}", rand::random::<u128>()),
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

pub(super) fn hdr_status(in_hdr: &Header, code: StatusCode, chal: Option<Meta>) -> Status {
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
    fn error_reply(
        &self,
        in_hdr: &Header,
        code: StatusCode,
        why: &str,
        encoding: Encoding,
    ) -> Vec<u8> {
        let mut st = hdr_status(in_hdr, code, None);
        st.items = vec![Item::default().with_data(why)];
        let m = Message {
            header: self.header_for(&in_hdr.session_id, &in_hdr.source.uri, 1),
            commands: vec![Command::Status(st)],
            final_: true,
        };
        encoding.encode(&m)
    }

    /// Handles one message from a device at `peer`; returns the XML answer.
    /// `session_key` is the `s` of the RespURI the message was posted to, if any. The answer
    /// is in the message's `encoding`.
    pub async fn handle(
        &self,
        body: &[u8],
        encoding: Encoding,
        peer: Option<IpAddr>,
        session_key: Option<&str>,
    ) -> Result<Vec<u8>, EngineError> {
        let msg = match encoding.decode(body, &self.cfg.limits) {
            Ok(m) => m,
            Err(e) => {
                // The body is bad but perhaps the header is not: answer in SyncML, session
                // untouched, so the device can send a good message next.
                let hdr = encoding
                    .decode_header(body, &self.cfg.limits)
                    .map_err(|_| EngineError::Undecodable(e.clone()))?;
                let code = match e {
                    CodecError::TooLarge { .. } => StatusCode::RequestEntityTooLarge,
                    CodecError::UnknownCommand(_) => StatusCode::OptionalFeatureNotSupported,
                    _ => StatusCode::BadRequest,
                };
                tracing::info!(device = %hdr.source.uri, error = %e, "malformed SyncML message");
                return Ok(self.error_reply(&hdr, code, &e.to_string(), encoding));
            }
        };
        let device = msg.header.source.uri.clone();
        self.auth_throttle
            .check(&throttle_key(&device, peer))
            .map_err(EngineError::Backoff)?;
        let key = (device.clone(), msg.header.session_id.clone());
        let taken = self.sessions().remove(&key);
        let taken = taken.filter(|s| s.last_seen.elapsed() < self.cfg.session_timeout);
        // MsgID 1 starts a session over: the device abandoned the one we hold (or its
        // authentication failed); waiting for that to expire would lock it out. An
        // authenticated session is only replaced once the new start authenticates too, so a
        // stranger replaying a MsgID 1 cannot end the device's session.
        let mut abandoned = None;
        let mut s = match taken {
            Some(old) if msg.header.msg_id == 1 && old.next_in != 1 => {
                tracing::info!(device = %device, session = %msg.header.session_id, "the device starts its session over");
                if old.authenticated {
                    abandoned = Some(old);
                }
                Session::new(&msg, peer, encoding)
            }
            Some(s) => s,
            None if msg.header.msg_id == 1 => Session::new(&msg, peer, encoding),
            None => {
                return Ok(self.error_reply(
                    &msg.header,
                    StatusCode::BadRequest,
                    "unknown or expired session; start a new one with MsgID 1",
                    encoding,
                ))
            }
        };
        if msg.header.msg_id != s.next_in {
            let why = format!(
                "MsgID {} out of order (expected {})",
                msg.header.msg_id, s.next_in
            );
            let reply = self.error_reply(&msg.header, StatusCode::BadRequest, &why, encoding);
            self.sessions().insert(key, s);
            return Ok(reply);
        }
        if s.authenticated && !self.continues(&s, &msg, session_key).await? {
            // Neither this session's RespURI nor valid credentials: a stranger naming the
            // device and its SessionID. Refused like a failed credential, and throttled; the
            // session is left as it was.
            let backoff = self.auth_throttle.failed(&throttle_key(&device, peer));
            tracing::info!(device = %device, backoff_ms = backoff.map(|d| d.as_millis() as u64), "a message for a session without its key or credentials");
            self.sessions().insert(key, s);
            return Ok(self.error_reply(
                &msg.header,
                StatusCode::InvalidCredentials,
                "continue the session at its RespURI, or send credentials",
                encoding,
            ));
        }
        s.next_in += 1;
        s.last_seen = Instant::now();
        s.peer = peer;
        let result = self.process(&mut s, &msg).await;
        if let Some(old) = abandoned.filter(|_| !s.authenticated) {
            self.sessions().insert(key, old);
            return result.map(|(reply, _)| reply);
        }
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

    /// Processes a message; returns the answer and whether the session continues.
    async fn process(
        &self,
        s: &mut Session,
        msg: &Message,
    ) -> Result<(Vec<u8>, bool), EngineError> {
        let mut statuses: Vec<Status> = Vec::new();
        if s.authenticated {
            statuses.push(hdr_status(&msg.header, StatusCode::Ok, None));
        } else {
            let st = self.authenticate(s, msg).await?;
            statuses.push(st);
            if !s.authenticated {
                // Keep the session for a retry with the new nonce, but not for an unknown
                // device: strangers must not fill the session table.
                let refused = statuses.first().map(|st| st.code);
                let known = refused.is_some_and(|c| c != StatusCode::Forbidden.code());
                // Every command gets its own Status (not executed, for the same reason), so
                // that clients which re-send per command do re-send.
                let code = refused
                    .and_then(StatusCode::from_code)
                    .unwrap_or(StatusCode::InvalidCredentials);
                for cmd in &msg.commands {
                    if !matches!(cmd, Command::Status(_) | Command::Results(_)) {
                        statuses.push(status_for(cmd, msg.header.msg_id, code));
                    }
                }
                let reply = self.compose(s, statuses, Vec::new(), true);
                return Ok((reply, known));
            }
        }
        let msg_ref = msg.header.msg_id;
        // The device's verdict on our credentials: refused, none of our commands ran, and
        // their statuses say only that.
        let our_header_refused = msg.commands.iter().find_map(|c| match c {
            Command::Status(st) if st.cmd_ref == 0 && matches!(st.code, 401 | 407) => Some(st),
            _ => None,
        });
        if our_header_refused.is_none() {
            s.server_auth_refusals = 0;
        }
        let mut end_requested = false;
        for cmd in &msg.commands {
            match cmd {
                Command::Status(_) | Command::Results(_) if our_header_refused.is_some() => {}
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
        s.messages += 1;
        let cap = self
            .cfg
            .max_session_messages
            .saturating_add(s.expected_messages);
        if s.messages > cap {
            tracing::warn!(device = %s.device, messages = s.messages, "session message cap reached; ending the session");
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
        if let Some(refusal) = our_header_refused {
            return self
                .resend_with_fresh_credentials(s, statuses, refusal)
                .await;
        }
        // Every command we sent was answered in this message or never will be.
        s.outstanding.clear();
        s.next_cmd = statuses.len() as u32 + 1;
        let (commands, final_) = self.drive(s).await?;
        if let Some(repeated) = self.repeated_too_often(s, &commands).await? {
            tracing::warn!(device = %s.device, command = %repeated, "a command went unanswered {MAX_REPEATS} times; ending the session");
            s.outstanding.clear();
            return Ok((self.compose(s, statuses, Vec::new(), true), false));
        }
        let keep = !commands.is_empty() || !s.outstanding.is_empty();
        Ok((self.compose(s, statuses, commands, final_), keep))
    }

    /// Counts the commands about to be sent; the first sent more than [`MAX_REPEATS`] times
    /// in this session is returned, after its job's timeline says so (the job goes on in a
    /// later session).
    async fn repeated_too_often(
        &self,
        s: &mut Session,
        commands: &[Command],
    ) -> Result<Option<String>, EngineError> {
        for c in commands {
            // An object's chunks all target its Data node; each is new.
            if matches!(s.outstanding.get(&c.cmd_id()), Some(Pending::Chunk { .. })) {
                continue;
            }
            let target = c
                .items()
                .first()
                .and_then(|i| i.target.as_ref())
                .map_or("", |t| t.uri.as_str());
            let key = format!("{} {target}", c.name());
            let n = s.sent.entry(key.clone()).or_insert(0);
            *n += 1;
            if *n <= MAX_REPEATS {
                continue;
            }
            if let Some(job) = s.outstanding.get(&c.cmd_id()).map(|p| p.job().to_string()) {
                if let Some(mut j) = self.load_job(&job).await? {
                    j.record(
                        Step::DeviceRefused,
                        Some(format!(
                            "{key}: sent {MAX_REPEATS} times in one session without an answer"
                        )),
                    );
                    self.save_job(&j).await?;
                }
            }
            return Ok(Some(key));
        }
        Ok(None)
    }

    /// Builds the answer: header, statuses (numbered 1..n), then the commands (numbered from
    /// n+1 by the stage machine).
    pub(super) fn compose(
        &self,
        s: &mut Session,
        statuses: Vec<Status>,
        commands: Vec<Command>,
        final_: bool,
    ) -> Vec<u8> {
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
        s.last_commands.clone_from(&commands);
        s.last_final = final_;
        out.extend(commands);
        let mut header = self.header_for(&s.session_id, &s.device, msg_id);
        header.cred = self.server_cred(&s.server_auth);
        if s.authenticated {
            let sep = if self.cfg.dm_url.contains('?') {
                '&'
            } else {
                '?'
            };
            header.resp_uri = Some(format!("{}{sep}s={}", self.cfg.dm_url, s.key));
        }
        let m = Message {
            header,
            commands: out,
            final_,
        };
        s.encoding.encode(&m)
    }
}
