//! One DM session with the DMS, as a device runs it: package 1 (the session's Alert, DevInfo,
//! pending reports and requests), authentication against the server's challenges, and the
//! answer to every command the server sends, read from and written to the device's tree
//! (large objects reassembled chunk by chunk).

use super::operations::QueuedOp;
use super::{objects_dir, Agent, DeviceError, Trigger};
use crate::device::state::{DeviceState, PendingReport};
use crate::scomo;
use crate::syncml::auth;
use crate::syncml::codec::Limits;
use crate::syncml::codes::{AlertCode, StatusCode};
use crate::syncml::large_object::{Progress, Reassembly};
use crate::syncml::message::*;
use crate::syncml::Encoding;

/// SyncML 1.2's public DOCTYPE, as strict clients start their messages.
const DOCTYPE: &str = "<!DOCTYPE SyncML PUBLIC \"-//SYNCML//DTD SyncML 1.2//EN\" \"http://www.openmobilealliance.org/tech/DTD/OMA-TS-DM_SyncML-V1_2.dtd\">\n";

impl Agent {
    /// The DM account's user name.
    fn user(&self) -> &str {
        self.cfg.strict.username.as_deref().unwrap_or(&self.cfg.id)
    }

    fn cred(&self, st: &DeviceState) -> Cred {
        if self.cfg.auth == "basic" {
            return Cred {
                meta: Meta {
                    type_: Some(auth::AUTH_BASIC.into()),
                    format: Some("b64".into()),
                    ..Meta::default()
                },
                data: auth::basic(self.user(), &self.cfg.password),
            };
        }
        Cred {
            meta: Meta {
                type_: Some(auth::AUTH_MD5.into()),
                format: Some("b64".into()),
                ..Meta::default()
            },
            data: auth::md5_digest(
                self.user(),
                &self.cfg.password,
                &auth::decode_nonce(&st.server_nonce),
            ),
        }
    }

    /// With [`Strict::require_server_auth`](super::Strict): whether the server's message
    /// carries its credential (MD5 over the server id, server password and our nonce).
    /// `Err` is the status for its header: 407 without one, 401 with a wrong one.
    fn check_server(&self, st: &DeviceState, hdr: &Header) -> Result<(), StatusCode> {
        if !self.cfg.strict.require_server_auth {
            return Ok(());
        }
        let Some(c) = &hdr.cred else {
            return Err(StatusCode::MissingCredentials);
        };
        let ok = c.meta.type_.as_deref() == Some(auth::AUTH_MD5)
            && auth::verify_md5(
                &c.data,
                &self.cfg.server_id,
                &self.cfg.server_password,
                &auth::decode_nonce(&st.client_nonce),
            );
        if ok {
            Ok(())
        } else {
            Err(StatusCode::InvalidCredentials)
        }
    }

    async fn post(&self, url: &str, m: &Message) -> Result<Message, DeviceError> {
        let encoding = self.cfg.encoding;
        let mut body = encoding.encode(m);
        if self.cfg.strict.doctype && encoding == Encoding::Xml {
            // After the XML declaration, before the root element.
            let at = body.windows(7).position(|w| w == b"<SyncML").unwrap_or(0);
            body.splice(at..at, DOCTYPE.bytes());
        }
        let mut attempts = 0;
        let resp = loop {
            let resp = self
                .http
                .post(url)
                .header("content-type", encoding.content_type())
                .body(body.clone())
                .send()
                .await?;
            // 429 means the server refused the message before reading it (rate limit or auth
            // backoff): the same message, same MsgID, is still the right one to send.
            let wait = match crate::device::retry_wait(&resp) {
                Some(w)
                    if resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS && attempts < 3 =>
                {
                    w
                }
                _ => break resp,
            };
            attempts += 1;
            tracing::info!(wait_secs = wait.as_secs(), "the DMS asked us to slow down");
            tokio::time::sleep(wait).await;
        };
        if !resp.status().is_success() {
            return Err(DeviceError::HttpStatus(resp.status().as_u16()));
        }
        // The server answers in our encoding; a content type saying otherwise is believed.
        let answered = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(Encoding::from_content_type)
            .unwrap_or(encoding);
        let bytes = resp.bytes().await?;
        self.dm_bytes.fetch_add(
            (body.len() + bytes.len()) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(answered.decode(
            &bytes,
            &Limits {
                max_bytes: (self.cfg.max_msg_size as usize).max(64 * 1024) * 4,
                ..Limits::default()
            },
        )?)
    }

    /// One session; returns the operations the server Exec'd.
    pub(super) async fn session(&self, trigger: Trigger) -> Result<Vec<QueuedOp>, DeviceError> {
        let (session_id, alert, requests) = match trigger {
            Trigger::Server { session_id } => (session_id, AlertCode::ServerInitiated, Vec::new()),
            Trigger::Client { requests } => (
                format!("{:X}", rand::random::<u16>().max(1)),
                AlertCode::ClientInitiated,
                requests,
            ),
        };
        let mut st = self.state.lock().await.clone();
        let mut package1 = vec![Command::Alert(Alert {
            cmd_id: 1,
            code: alert.code(),
            ..Alert::default()
        })];
        package1.push(Command::Replace(ItemCommand {
            cmd_id: 2,
            items: self.cfg.info.items(),
            ..ItemCommand::default()
        }));
        let mut next_cmd = 3u32;
        let mut report_cmds: Vec<(u32, PendingReport)> = Vec::new();
        for r in &st.pending_reports {
            package1.push(Command::Alert(Alert {
                cmd_id: next_cmd,
                correlator: r.correlator.clone(),
                code: AlertCode::Generic.code(),
                items: vec![scomo::operation_complete_item(
                    &r.source,
                    r.target.as_deref(),
                    r.result,
                    r.identifier.as_deref(),
                )],
                ..Alert::default()
            }));
            report_cmds.push((next_cmd, r.clone()));
            next_cmd += 1;
        }
        if !requests.is_empty() {
            package1.push(Command::Alert(Alert {
                cmd_id: next_cmd,
                code: AlertCode::Generic.code(),
                items: requests,
                ..Alert::default()
            }));
        }
        let header = |msg_id: u32, cred: Option<Cred>| Header {
            session_id: session_id.clone(),
            msg_id,
            target: Location::uri(&self.cfg.dms_url),
            source: Location {
                uri: self.cfg.id.clone(),
                name: Some(self.user().to_string()),
            },
            cred,
            meta: Meta {
                max_msg_size: Some(self.cfg.max_msg_size),
                max_obj_size: Some(self.cfg.max_obj_size),
                ..Meta::default()
            },
            ..Header::default()
        };
        let mut msg_id = 1u32;
        let mut out = Message {
            header: header(msg_id, Some(self.cred(&st))),
            commands: package1.clone(),
            final_: true,
        };
        let mut url = self.cfg.dms_url.clone();
        let mut auth_tries = 0;
        let mut server_refusals = 0u32;
        let mut authenticated = false;
        let mut ops = Vec::new();
        let mut reassembly: Option<Reassembly> = None;
        let mut sent = 0u32;
        // Enough messages for the largest object we accept in chunks of our message size,
        // twice over (status round trips), plus the session's own traffic; no more.
        let chunks = self.cfg.max_obj_size / self.cfg.max_msg_size.max(1024);
        let max_messages =
            u32::try_from(chunks.saturating_mul(2).saturating_add(200)).unwrap_or(u32::MAX);
        loop {
            if sent >= max_messages {
                return Err(DeviceError::Runaway(sent));
            }
            if let Some(n) = self.cfg.faults.drop_after_messages {
                if sent >= n && st.drops_done < self.cfg.faults.drop_sessions.max(1) {
                    st.drops_done += 1;
                    let mut live = self.state.lock().await;
                    live.drops_done = st.drops_done;
                    drop(live);
                    self.save().await?;
                    tracing::info!(device = %self.cfg.id, "fault injection: dropping the session");
                    return Err(DeviceError::Dropped);
                }
            }
            let reply = self.post(&url, &out).await?;
            sent += 1;
            if let Some(r) = &reply.header.resp_uri {
                url = r.clone();
            }
            // The header's status: authentication.
            let hdr_status = reply.commands.iter().find_map(|c| match c {
                Command::Status(s) if s.cmd_ref == 0 => Some(s.clone()),
                _ => None,
            });
            if let Some(hs) = &hdr_status {
                if let Some(n) = hs.chal.as_ref().and_then(|c| c.next_nonce.clone()) {
                    st.server_nonce = n;
                }
                match hs.code {
                    200 | 212 => authenticated = true,
                    401 | 407 if !authenticated && auth_tries < 2 => {
                        auth_tries += 1;
                        msg_id += 1;
                        out = Message {
                            header: header(msg_id, Some(self.cred(&st))),
                            commands: package1.clone(),
                            final_: true,
                        };
                        continue;
                    }
                    code if !authenticated => {
                        self.state.lock().await.server_nonce = st.server_nonce.clone();
                        self.save().await?;
                        return Err(DeviceError::AuthFailed(code));
                    }
                    _ => {}
                }
            }
            let msg_ref = reply.header.msg_id;
            if let Err(code) = self.check_server(&st, &reply.header) {
                server_refusals += 1;
                if server_refusals > 3 {
                    self.state.lock().await.client_nonce = st.client_nonce.clone();
                    self.save().await?;
                    return Err(DeviceError::ServerNotAuthenticated(code.code()));
                }
                // Not the server we know: nothing it sent is executed or believed. Challenge
                // it with a fresh nonce and refuse every command the same way.
                let nonce = auth::encode_nonce(&auth::new_nonce());
                st.client_nonce.clone_from(&nonce);
                tracing::info!(device = %self.cfg.id, status = code.code(), "the server did not authenticate; challenging it");
                let mut commands = vec![Command::Status(Status {
                    msg_ref,
                    cmd_ref: 0,
                    cmd: "SyncHdr".into(),
                    target_refs: vec![reply.header.target.uri.clone()],
                    source_refs: vec![reply.header.source.uri.clone()],
                    chal: Some(Meta {
                        type_: Some(auth::AUTH_MD5.into()),
                        format: Some("b64".into()),
                        next_nonce: Some(nonce),
                        ..Meta::default()
                    }),
                    code: code.code(),
                    ..Status::default()
                })];
                for c in &reply.commands {
                    if !matches!(c, Command::Status(_) | Command::Results(_)) {
                        commands.push(Command::Status(Status {
                            msg_ref,
                            cmd_ref: c.cmd_id(),
                            cmd: c.name().to_string(),
                            code: code.code(),
                            ..Status::default()
                        }));
                    }
                }
                for (i, c) in commands.iter_mut().enumerate() {
                    c.set_cmd_id(i as u32 + 1);
                }
                msg_id += 1;
                out = Message {
                    header: header(msg_id, None),
                    commands,
                    final_: true,
                };
                continue;
            }
            server_refusals = 0;
            // Acknowledged reports leave the queue.
            for c in &reply.commands {
                if let Command::Status(s) = c {
                    if s.code == 200 && s.msg_ref == 1 {
                        if let Some((_, r)) = report_cmds.iter().find(|(id, _)| *id == s.cmd_ref) {
                            st.pending_reports.retain(|p| p != r);
                        }
                    }
                }
            }
            // Answer the server's commands.
            let mut answers: Vec<Command> = Vec::new();
            let mut needs_reply = false;
            for c in &reply.commands {
                self.answer(
                    c,
                    msg_ref,
                    &mut st,
                    &mut reassembly,
                    &mut ops,
                    &mut answers,
                    &mut needs_reply,
                );
            }
            if !needs_reply && reply.final_ {
                break;
            }
            if !reply.final_ {
                answers.push(Command::Alert(Alert {
                    code: AlertCode::NextMessage.code(),
                    ..Alert::default()
                }));
            }
            msg_id += 1;
            let mut hdr_ack = Status {
                msg_ref,
                cmd_ref: 0,
                cmd: "SyncHdr".into(),
                target_refs: vec![reply.header.target.uri.clone()],
                source_refs: vec![reply.header.source.uri.clone()],
                code: StatusCode::Ok.code(),
                ..Status::default()
            };
            hdr_ack.cmd_id = 1;
            let mut commands = vec![Command::Status(hdr_ack)];
            commands.extend(answers);
            for (i, c) in commands.iter_mut().enumerate() {
                c.set_cmd_id(i as u32 + 1);
            }
            out = Message {
                header: header(msg_id, None),
                commands,
                final_: true,
            };
        }
        // Commit the session's effects.
        let mut live = self.state.lock().await;
        *live = st;
        drop(live);
        self.save().await?;
        Ok(ops)
    }

    #[allow(clippy::too_many_arguments)]
    fn answer(
        &self,
        c: &Command,
        msg_ref: u32,
        st: &mut DeviceState,
        reassembly: &mut Option<Reassembly>,
        ops: &mut Vec<QueuedOp>,
        out: &mut Vec<Command>,
        needs_reply: &mut bool,
    ) {
        let status = |code: StatusCode| {
            Command::Status(Status {
                msg_ref,
                cmd_ref: c.cmd_id(),
                cmd: c.name().to_string(),
                target_refs: c
                    .items()
                    .iter()
                    .filter_map(|i| i.target.as_ref().map(|t| t.uri.clone()))
                    .take(1)
                    .collect(),
                code: code.code(),
                ..Status::default()
            })
        };
        match c {
            Command::Status(_) | Command::Results(_) => {}
            Command::Alert(_) => {
                *needs_reply = true;
                out.push(status(StatusCode::Ok));
            }
            Command::Get(g) => {
                *needs_reply = true;
                let mut items = Vec::new();
                let mut code = StatusCode::Ok;
                for i in &g.items {
                    let uri = i.target.as_ref().map(|t| t.uri.as_str()).unwrap_or("");
                    if self.cfg.strict.refuse_list && uri.contains("?list=") {
                        code = StatusCode::OptionalFeatureNotSupported;
                        continue;
                    }
                    match st.tree.get_items(uri) {
                        Ok(found) => items.extend(found),
                        Err(e) => code = e.status(),
                    }
                }
                out.push(status(code));
                if code == StatusCode::Ok {
                    out.push(Command::Results(Results {
                        msg_ref: Some(msg_ref),
                        cmd_ref: g.cmd_id,
                        items,
                        ..Results::default()
                    }));
                }
            }
            Command::Add(_) if self.cfg.faults.refuse_adds => {
                *needs_reply = true;
                out.push(status(StatusCode::CommandNotAllowed));
            }
            Command::Replace(r) | Command::Add(r) => {
                *needs_reply = true;
                let mut code = StatusCode::Ok;
                for i in &r.items {
                    let Some(target) = i.target.as_ref().map(|t| t.uri.clone()) else {
                        code = StatusCode::BadRequest;
                        continue;
                    };
                    let is_data = target.starts_with("./SCOMO/Inventory/Delivered/")
                        && target.ends_with("/Data");
                    if is_data && (i.more_data || reassembly.is_some() || i.meta.size.is_some()) {
                        let progress = match reassembly.as_mut() {
                            Some(r) => r.push(i),
                            None => Reassembly::start(i, self.cfg.max_obj_size).map(|(r, p)| {
                                *reassembly = Some(r);
                                p
                            }),
                        };
                        code = match progress {
                            Ok(Progress::NeedMore) => StatusCode::ChunkAccepted,
                            Ok(Progress::Complete(bytes)) => {
                                *reassembly = None;
                                self.store_delivered(st, &target, bytes)
                            }
                            Err(e) => {
                                *reassembly = None;
                                e.status()
                            }
                        };
                        continue;
                    }
                    let format = i.meta.format.as_deref().unwrap_or("chr");
                    let value = i.data.clone().unwrap_or_default();
                    let res = if self.cfg.strict.strict_writes {
                        Self::strict_write(st, matches!(c, Command::Add(_)), &target, format, value)
                    } else if format == "node" {
                        st.tree.add_interior(&target)
                    } else {
                        st.tree.set(&target, format, value)
                    };
                    if let Err(e) = res {
                        code = e.status();
                    }
                }
                out.push(status(code));
            }
            Command::Delete(d) => {
                *needs_reply = true;
                let mut code = StatusCode::Ok;
                for i in &d.items {
                    let uri = i.target.as_ref().map(|t| t.uri.as_str()).unwrap_or("");
                    if let Err(e) = st.tree.delete(uri) {
                        code = e.status();
                    }
                }
                out.push(status(code));
            }
            Command::Exec(e) => {
                *needs_reply = true;
                let target = e
                    .items
                    .first()
                    .and_then(|i| i.target.as_ref())
                    .map(|t| t.uri.clone())
                    .unwrap_or_default();
                let code = match scomo::parse_operation_path(&target) {
                    Some((node, op)) if st.tree.get(&node).is_some() => {
                        ops.push(QueuedOp {
                            correlator: e.correlator.clone(),
                            exec_path: target.clone(),
                            node,
                            op,
                        });
                        StatusCode::Accepted
                    }
                    Some(_) => StatusCode::NotFound,
                    None => StatusCode::CommandNotAllowed,
                };
                out.push(status(code));
            }
            Command::Sequence(s) | Command::Atomic(s) => {
                *needs_reply = true;
                out.push(status(StatusCode::Ok));
                for inner in &s.commands {
                    self.answer(inner, msg_ref, st, reassembly, ops, out, needs_reply);
                }
            }
            Command::Copy(_) => {
                *needs_reply = true;
                out.push(status(StatusCode::OptionalFeatureNotSupported));
            }
        }
    }

    /// Writes as strict devices do: `Add` creates a node under an existing parent and is
    /// refused (418) for one that exists; `Replace` changes an existing node only (404).
    fn strict_write(
        st: &mut DeviceState,
        add: bool,
        target: &str,
        format: &str,
        value: String,
    ) -> Result<(), crate::syncml::tree::TreeError> {
        use crate::syncml::tree::TreeError;
        let exists = st.tree.get(target).is_some();
        if add {
            let parent = target.rsplit_once('/').map_or(".", |(p, _)| p);
            if st.tree.get(parent).is_none() {
                return Err(TreeError::NotFound(parent.to_string()));
            }
            let value = (format != "node").then_some(value);
            return st.tree.add(target, format, value);
        }
        if !exists {
            return Err(TreeError::NotFound(target.to_string()));
        }
        st.tree.set(target, format, value)
    }

    /// Keeps a delivered object beside the state file and records it in the tree.
    fn store_delivered(
        &self,
        st: &mut DeviceState,
        data_path: &str,
        mut bytes: Vec<u8>,
    ) -> StatusCode {
        let Some(node) = data_path.strip_suffix("/Data") else {
            return StatusCode::BadRequest;
        };
        let id = node.rsplit('/').next().unwrap_or("pkg").to_string();
        if self.cfg.faults.corrupt_delivered && !bytes.is_empty() {
            bytes[0] ^= 0xff;
        }
        let dir = objects_dir(&self.cfg.state_path);
        if std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::write(dir.join(&id), &bytes))
            .is_err()
        {
            return StatusCode::DeviceFull;
        }
        let pkg = st
            .tree
            .value(&format!("{node}/PkgID"))
            .unwrap_or(&id)
            .to_string();
        let name = st
            .tree
            .value(&format!("{node}/Name"))
            .unwrap_or(&id)
            .to_string();
        if scomo::write_delivered(&mut st.tree, &id, &pkg, &name).is_err() {
            return StatusCode::CommandFailed;
        }
        let _ = st.tree.set(
            &format!("{node}/Data"),
            "bin",
            format!("{} bytes", bytes.len()),
        );
        StatusCode::Ok
    }
}
