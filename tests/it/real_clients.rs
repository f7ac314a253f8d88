//! The DMS against clients it did not write (issue 16): what a standards-following OMA DM 1.2
//! client does, sent by hand as raw SyncML, and our agent in its strict modes (server
//! credentials required, DOCTYPE, empty first nonce, a login name that is not its id).

use crate::common::*;
use scomo_ads::syncml::auth;
use scomo_ads::syncml::codec::{self, Limits};
use scomo_ads::syncml::message::*;
use serde_json::json;

/// A hand-built client session: one device, one SessionID, raw messages over real TLS.
struct RawClient<'a> {
    dms: &'a Dms,
    http: reqwest::Client,
    device: String,
    session: String,
    /// Where the next message goes: the DM URL, then the RespURI of the last reply.
    url: std::sync::Mutex<String>,
}

impl<'a> RawClient<'a> {
    fn new(dms: &'a Dms, device: &str, session: &str) -> Self {
        Self {
            dms,
            http: dms.client(),
            device: device.into(),
            session: session.into(),
            url: std::sync::Mutex::new(dms.handle.dm_url.clone()),
        }
    }

    /// Package 1 (Alert 1201 and DevInfo) as message `msg_id`, with `cred` and the
    /// account name `user` in `LocName`.
    fn package1(&self, msg_id: u32, cred: Option<Cred>, user: Option<&str>) -> Message {
        Message {
            header: Header {
                session_id: self.session.clone(),
                msg_id,
                target: Location::uri(&self.dms.handle.dm_url),
                source: Location {
                    uri: self.device.clone(),
                    name: user.map(String::from),
                },
                cred,
                ..Header::default()
            },
            commands: vec![
                Command::Alert(Alert {
                    cmd_id: 1,
                    code: 1201,
                    ..Alert::default()
                }),
                Command::Replace(ItemCommand {
                    cmd_id: 2,
                    items: scomo_ads::syncml::tree::DevInfo {
                        dev_id: self.device.clone(),
                        man: "Acme".into(),
                        model: "Roadrunner".into(),
                        dm_v: "1.2".into(),
                        lang: "en".into(),
                    }
                    .items(),
                    ..ItemCommand::default()
                }),
            ],
            final_: true,
        }
    }

    async fn post(&self, m: &Message) -> reqwest::Response {
        let url = self.url.lock().unwrap().clone();
        self.http
            .post(url)
            .header("content-type", scomo_ads::syncml::CONTENT_TYPE)
            .body(codec::encode(m))
            .send()
            .await
            .unwrap()
    }

    async fn send(&self, m: &Message) -> Message {
        let r = self.post(m).await;
        assert_eq!(r.status(), 200, "answered in SyncML");
        let reply = codec::decode(&r.bytes().await.unwrap(), &Limits::default()).unwrap();
        if let Some(u) = &reply.header.resp_uri {
            *self.url.lock().unwrap() = u.clone();
        }
        reply
    }
}

fn md5_cred(user: &str, password: &str, nonce: &[u8]) -> Option<Cred> {
    Some(Cred {
        meta: Meta {
            type_: Some(auth::AUTH_MD5.into()),
            format: Some("b64".into()),
            ..Meta::default()
        },
        data: auth::md5_digest(user, password, nonce),
    })
}

/// The status for our SyncHdr in a reply.
fn hdr_status(reply: &Message) -> Status {
    reply
        .commands
        .iter()
        .find_map(|c| match c {
            Command::Status(s) if s.cmd_ref == 0 => Some(s.clone()),
            _ => None,
        })
        .expect("a status for the header")
}

fn statuses(reply: &Message) -> Vec<(u32, String, u16)> {
    reply
        .commands
        .iter()
        .filter_map(|c| match c {
            Command::Status(s) if s.cmd_ref != 0 => Some((s.cmd_ref, s.cmd.clone(), s.code)),
            _ => None,
        })
        .collect()
}

async fn provision(dms: &Dms, id: &str, extra: serde_json::Value) {
    let mut body = json!({"password": "dev-secret"});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let r = dms
        .client()
        .put(dms.api(&format!("/v1/devices/{id}")))
        .bearer_auth(&dms.handle.api_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// Items 2 and 5: a refused credential gets 401/407 with a full Chal for the header and a
/// Status for every command; the device then starts over with MsgID 1 in the same SessionID
/// and is let in (no "MsgID out of order" lock-out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_credential_gets_a_full_answer_and_the_device_may_start_over() {
    let dms = start_dms().await;
    dms.provision("IMEI:1601", "dev-secret", None).await;
    let c = RawClient::new(&dms, "IMEI:1601", "5A");
    // No credential: 407 with a challenge, and every command refused the same way.
    let reply = c.send(&c.package1(1, None, None)).await;
    let h = hdr_status(&reply);
    assert_eq!(h.code, 407);
    let chal = h.chal.expect("a Chal");
    assert_eq!(chal.type_.as_deref(), Some(auth::AUTH_MD5));
    assert_eq!(chal.format.as_deref(), Some("b64"));
    let nonce = chal.next_nonce.expect("a NextNonce");
    assert_eq!(
        statuses(&reply),
        [(1, "Alert".into(), 407), (2, "Replace".into(), 407)],
        "every command has its own Status, not executed"
    );
    // A wrong password: 401, again with every command answered.
    let reply = c
        .send(&c.package1(2, md5_cred("IMEI:1601", "guess", b"x"), None))
        .await;
    assert_eq!(hdr_status(&reply).code, 401);
    assert_eq!(statuses(&reply).len(), 2);
    let nonce2 = hdr_status(&reply).chal.unwrap().next_nonce.unwrap();
    // The device gives up on that session and starts over, MsgID 1, same SessionID, with the
    // first nonce it was offered: accepted (both offered nonces stay valid until one is used).
    let reply = c
        .login("IMEI:1601", &auth::decode_nonce(&nonce), None)
        .await;
    assert_eq!(hdr_status(&reply).code, 212, "{reply:#?}");
    assert_eq!(
        statuses(&reply),
        [(1, "Alert".into(), 200), (2, "Replace".into(), 200)]
    );
    // Used once, the other offered nonce is gone with it.
    let c2 = RawClient::new(&dms, "IMEI:1601", "5B");
    let reply = c2
        .login("IMEI:1601", &auth::decode_nonce(&nonce2), None)
        .await;
    assert_eq!(hdr_status(&reply).code, 401);
}

/// Items 3 and 4: a factory-fresh device's first credential over the empty nonce, or over the
/// provisioned initial nonce, under the account's login name (not its id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_nonces_and_login_names_as_devices_really_start() {
    let dms = start_dms().await;
    provision(
        &dms,
        "IMEI:356938035643809",
        json!({"username": "funky-login", "client_auth_nonce": "c2VjcmV0LW5vbmNl"}),
    )
    .await;
    let c = RawClient::new(&dms, "IMEI:356938035643809", "1");
    // The device id is not the account name: a digest over it is refused.
    let reply = c.login("IMEI:356938035643809", b"", None).await;
    assert_eq!(hdr_status(&reply).code, 401);
    // The login name with the empty nonce of a factory-fresh device: in.
    let c = RawClient::new(&dms, "IMEI:356938035643809", "2");
    let reply = c.login("funky-login", b"", Some("funky-login")).await;
    assert_eq!(hdr_status(&reply).code, 212);
    let next = hdr_status(&reply).chal.unwrap().next_nonce.unwrap();
    // Once the device has authenticated, the empty nonce is no longer good...
    let c = RawClient::new(&dms, "IMEI:356938035643809", "3");
    let reply = c.login("funky-login", b"", None).await;
    assert_eq!(hdr_status(&reply).code, 401);
    // ...the nonce of the last 212 is.
    let c = RawClient::new(&dms, "IMEI:356938035643809", "4");
    let reply = c
        .login("funky-login", &auth::decode_nonce(&next), None)
        .await;
    assert_eq!(hdr_status(&reply).code, 212);

    // Another device provisioned with an initial nonce starts with that one.
    provision(
        &dms,
        "IMEI:2",
        json!({"client_auth_nonce": "c2VjcmV0LW5vbmNl"}),
    )
    .await;
    let c = RawClient::new(&dms, "IMEI:2", "1");
    let reply = c.login("IMEI:2", b"secret-nonce", None).await;
    assert_eq!(hdr_status(&reply).code, 212);
    // Bad provisioning input is refused with the reason.
    let r = dms
        .client()
        .put(dms.api("/v1/devices/IMEI:3"))
        .bearer_auth(&dms.handle.api_token)
        .json(&json!({"password": "p", "client_auth_nonce": "not base64!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("client_auth_nonce"));
}

/// Item 10: messages without credentials in a device's name do not rotate its nonce: the real
/// device, with the nonce of its last session, still gets in on the first try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_else_can_rotate_a_devices_nonce() {
    let dms = start_dms().await;
    dms.provision("IMEI:1610", "dev-secret", None).await;
    let c = RawClient::new(&dms, "IMEI:1610", "1");
    let reply = c.login("IMEI:1610", &[0, 0, 0, 0], None).await;
    assert_eq!(hdr_status(&reply).code, 212);
    let nonce = hdr_status(&reply).chal.unwrap().next_nonce.unwrap();
    // Someone else, in the device's name, without credentials, until its address is made
    // to wait (after the free failures).
    let attacker = client_from(&dms.handle.cert_path, "127.0.0.3".parse().unwrap());
    let mut answered = Vec::new();
    for i in 0..10 {
        let mut a = RawClient::new(&dms, "IMEI:1610", &format!("A{i}"));
        a.http = attacker.clone();
        answered.push(a.post(&a.package1(1, None, None)).await.status().as_u16());
    }
    assert_eq!(
        answered.iter().filter(|s| **s == 200).count(),
        6,
        "{answered:?}"
    );
    assert_eq!(answered.last(), Some(&429), "{answered:?}");
    let c = RawClient::new(&dms, "IMEI:1610", "2");
    let reply = c
        .login("IMEI:1610", &auth::decode_nonce(&nonce), None)
        .await;
    assert_eq!(hdr_status(&reply).code, 212, "the real device is let in");
}

fn strict_device(dms: &Dms, id: &str, dir: &std::path::Path) -> scomo_ads::device::DeviceConfig {
    let mut cfg = device_config(dms, id, dir, Default::default());
    cfg.strict = scomo_ads::device::Strict {
        require_server_auth: true,
        doctype: true,
        empty_first_nonce: true,
        username: Some(format!("login-of-{id}")),
        refuse_list: true,
        strict_writes: true,
    };
    cfg
}

/// Our agent in every strict mode, trusting `ads`, provisioned with the record such a device
/// needs; the DMS starts from `server_nonce` toward it.
async fn start_strict(
    dms: &Dms,
    id: &str,
    server_nonce: &str,
    ads: &[&Node],
    faults: scomo_ads::device::Faults,
) -> Device {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = strict_device(dms, id, dir.path());
    cfg.ca_certs.extend(ads.iter().map(|n| n.cert()));
    cfg.faults = faults;
    let agent = scomo_ads::device::Agent::new(cfg).unwrap();
    let notify_url = notify_listener(dms, &agent).await;
    provision(
        dms,
        id,
        json!({
            "server_password": "srv-secret",
            "username": format!("login-of-{id}"),
            "client_auth_nonce": "",
            "server_auth_nonce": server_nonce,
            "notify_url": notify_url,
        }),
    )
    .await;
    Device {
        agent,
        notify_url,
        dir,
    }
}

/// Items 1, 3, 4 and 8 with our agent in every strict mode at once: it requires the server's
/// credentials, sends the DOCTYPE, starts with the empty nonce under a login name. Delivery
/// and an operation both end 1200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_device_completes_delivery_and_operations() {
    let dms = start_dms().await;
    dms.add_component(
        &[("name", "fw"), ("version", "2.0"), ("manufacturer", "Acme")],
        pattern(40_000, 3),
    )
    .await;
    let _dev = start_strict(&dms, "IMEI:1620", "AAAAAA==", &[], Default::default()).await;
    for (op, inventory_first) in [("download", true), ("install", false), ("inventory", false)] {
        let id = dms
            .create_job(
                json!({"device": "IMEI:1620", "operation": op, "component": "fw",
                               "inventory_first": inventory_first}),
            )
            .await;
        let j = dms.wait_job(&id, 30).await;
        assert_eq!(j["state"], "succeeded", "{j:#}");
        assert_eq!(j["result_code"], 1200);
    }
    let d = dms.device("IMEI:1620").await;
    // The device answers `?list=` with 406: DevDetail and the inventory were read node by node.
    assert_eq!(d["devdetail"]["fw_v"], "5.2", "{d:#}");
    assert_eq!(
        d["inventory"]["deployed"]["fw"]["State"], "20",
        "the installed component, read leaf by leaf: {d:#}"
    );
    assert_eq!(d["username"], "login-of-IMEI:1620");
    assert_eq!(d["server_auth"], "md5");
    assert!(
        d.get("client_auth_nonce").is_none(),
        "nonces are never shown"
    );
}

/// Item 1: the device challenges our credentials (its nonce is not the one we hold); we keep
/// its nonce and send the same commands again with fresh credentials, and the job completes.
/// A server password the device does not share fails the job with the device's status
/// instead of "succeeding" while the device refused everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_a_devices_challenge_and_a_wrong_server_password_fails_the_job() {
    let dms = start_dms().await;
    dms.add_component(
        &[("name", "fw"), ("version", "2.0"), ("manufacturer", "Acme")],
        pattern(20_000, 4),
    )
    .await;
    // The DMS starts from a nonce the device never gave it: the device challenges.
    let dev = start_strict(&dms, "IMEI:1630", "c3RhbGU=", &[], Default::default()).await;
    dev.agent.request_component("fw", false).await.unwrap();
    let jobs = wait_jobs(&dms, "IMEI:1630", 1).await;
    let j = dms.wait_job(&jobs[0], 30).await;
    assert_eq!(j["state"], "succeeded", "{j:#}");

    // Now a server password the device does not know.
    provision(
        &dms,
        "IMEI:1630",
        json!({"server_password": "not-the-devices", "username": "login-of-IMEI:1630",
               "notify_url": dev.notify_url}),
    )
    .await;
    // Package 0 would not verify either (same password): the device asks itself.
    let asked = dev.agent.request_operation("activate", "fw", false).await;
    assert!(asked.is_err(), "the device never trusted that server");
    let jobs = wait_jobs(&dms, "IMEI:1630", 2).await;
    let j = dms.wait_job(&jobs[1], 30).await;
    assert_eq!(j["state"], "failed", "{j:#}");
    assert!(
        j["reason"]
            .as_str()
            .unwrap()
            .contains("server's credentials"),
        "{j:#}"
    );
    assert!(steps(&j).contains(&"device_refused".to_string()), "{j:#}");
}

impl RawClient<'_> {
    /// Message `msg_id` answering `reply`: 200 for its header, then `answers`, final or not.
    fn answer(&self, msg_id: u32, reply: &Message, answers: Vec<Command>, final_: bool) -> Message {
        let mut commands = vec![Command::Status(Status {
            msg_ref: reply.header.msg_id,
            cmd_ref: 0,
            cmd: "SyncHdr".into(),
            code: 200,
            ..Status::default()
        })];
        commands.extend(answers);
        for (i, c) in commands.iter_mut().enumerate() {
            c.set_cmd_id(i as u32 + 1);
        }
        let mut m = self.package1(msg_id, None, None);
        m.commands = commands;
        m.final_ = final_;
        m
    }

    /// Message 1 with an MD5 credential of `user` (password `dev-secret`) over `nonce`.
    async fn login(&self, user: &str, nonce: &[u8], loc_name: Option<&str>) -> Message {
        self.send(&self.package1(1, md5_cred(user, "dev-secret", nonce), loc_name))
            .await
    }

    /// Opens a session with the right credential (the initial nonce); returns the reply.
    async fn open(&self) -> Message {
        let reply = self.login(&self.device, &[0, 0, 0, 0], None).await;
        assert_eq!(hdr_status(&reply).code, 212);
        reply
    }
}

/// The device's Status for `cmd` of `reply`.
fn status_for(reply: &Message, cmd: &Command, code: u16) -> Command {
    Command::Status(Status {
        msg_ref: reply.header.msg_id,
        cmd_ref: cmd.cmd_id(),
        cmd: cmd.name().to_string(),
        code,
        ..Status::default()
    })
}

fn commands_named<'m>(reply: &'m Message, name: &str) -> Vec<&'m Command> {
    reply.commands.iter().filter(|c| c.name() == name).collect()
}

/// Item 6: a refused read ends that step with the device's status on the timeline; an
/// inventory job whose read was refused fails instead of reporting 1200; a refused DevDetail
/// is asked for once, not in every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reads_end_their_step_with_the_devices_status() {
    let dms = start_dms().await;
    dms.add_component(
        &[("name", "fw"), ("version", "2.0"), ("fw_min", "5.0")],
        pattern(1000, 1),
    )
    .await;
    dms.provision("IMEI:1640", "dev-secret", None).await;
    let inventory = dms
        .create_job(json!({"device": "IMEI:1640", "operation": "inventory"}))
        .await;
    let c = RawClient::new(&dms, "IMEI:1640", "1");
    let reply = c.open().await;
    let get = commands_named(&reply, "Get")[0].clone();
    let reply = c
        .send(&c.answer(2, &reply, vec![status_for(&reply, &get, 403)], true))
        .await;
    let j = dms.wait_job(&inventory, 10).await;
    assert_eq!(j["state"], "failed", "{j:#}");
    assert_ne!(j["result_code"], 1200);
    let refused = timeline_step(&j, "device_refused");
    assert_eq!(
        refused["detail"],
        "Get ./SCOMO/Inventory?list=StructData: status 403"
    );
    assert!(commands_named(&reply, "Get").is_empty());

    // A firmware-dependent build needs DevDetail; the device refuses it (500).
    let download = dms
        .create_job(json!({"device": "IMEI:1640", "operation": "download", "component": "fw"}))
        .await;
    let c = RawClient::new(&dms, "IMEI:1640", "2");
    let reply = c.login("IMEI:1640", b"", None).await;
    // (The nonce of the last 212 is needed now: take it from a fresh challenge.)
    let nonce = hdr_status(&reply).chal.unwrap().next_nonce.unwrap();
    let c = RawClient::new(&dms, "IMEI:1640", "3");
    let reply = c
        .login("IMEI:1640", &auth::decode_nonce(&nonce), None)
        .await;
    assert_eq!(hdr_status(&reply).code, 212);
    let get = commands_named(&reply, "Get")[0].clone();
    assert!(format!("{get:?}").contains("./DevDetail"));
    let reply = c
        .send(&c.answer(2, &reply, vec![status_for(&reply, &get, 500)], true))
        .await;
    assert!(
        commands_named(&reply, "Get").is_empty(),
        "DevDetail is not asked for again: {reply:#?}"
    );
    let j = dms.wait_job(&download, 10).await;
    assert_eq!(j["state"], "failed", "{j:#}");
    assert!(steps(&j).contains(&"device_refused".to_string()));
}

/// Item 6: a device that never answers a command gets it at most three times in a session;
/// one that never ends its package gets at most `max_session_messages` answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_bounded_and_never_loop() {
    let dms = start_dms().await;
    dms.provision("IMEI:1650", "dev-secret", None).await;
    let job = dms
        .create_job(json!({"device": "IMEI:1650", "operation": "activate", "component": "fw"}))
        .await;
    let c = RawClient::new(&dms, "IMEI:1650", "1");
    let mut reply = c.open().await;
    let mut execs = 0;
    for msg_id in 2..10 {
        execs += commands_named(&reply, "Exec").len();
        if reply.final_ && reply.commands.iter().all(|c| c.name() == "Status") {
            break;
        }
        // Statuses for the header only: the Exec is never answered.
        reply = c.send(&c.answer(msg_id, &reply, Vec::new(), true)).await;
    }
    assert_eq!(
        execs, 3,
        "the Exec went out three times, then the session ended"
    );
    let j = dms.job(&job).await;
    assert!(steps(&j).contains(&"device_refused".to_string()), "{j:#}");
    assert_ne!(j["state"], "succeeded");

    // A package that never ends: the DMS asks for more 40 times, then ends the session.
    let c = RawClient::new(&dms, "IMEI:1650", "2");
    let first = c
        .post(&c.package1(1, md5_cred("IMEI:1650", "dev-secret", b"x"), None))
        .await;
    assert_eq!(first.status(), 200);
    // (Authenticate with the nonce the challenge gave.)
    let reply = codec::decode(&first.bytes().await.unwrap(), &Limits::default()).unwrap();
    let nonce = hdr_status(&reply).chal.unwrap().next_nonce.unwrap();
    let c = RawClient::new(&dms, "IMEI:1650", "3");
    let mut m = c.package1(
        1,
        md5_cred("IMEI:1650", "dev-secret", &auth::decode_nonce(&nonce)),
        None,
    );
    m.final_ = false;
    let mut reply = c.send(&m).await;
    let mut more = 0;
    for msg_id in 2..60 {
        if !reply
            .commands
            .iter()
            .any(|c| matches!(c, Command::Alert(a) if a.code == 1222))
        {
            break;
        }
        more += 1;
        reply = c.send(&c.answer(msg_id, &reply, Vec::new(), false)).await;
    }
    assert_eq!(more, 40, "max_session_messages (40), then the session ends");
}

/// Item 9: a session is bound to its RespURI key (128 bits), not to the device id and a 16-bit
/// SessionID: a stranger who names both is refused like a failed credential and the session
/// goes on untouched; a client that ignores RespURI continues with credentials instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_continues_only_at_its_resp_uri_or_with_credentials() {
    let dms = start_dms().await;
    dms.provision("IMEI:1660", "dev-secret", None).await;
    let job = dms
        .create_job(json!({"device": "IMEI:1660", "operation": "inventory"}))
        .await;
    let c = RawClient::new(&dms, "IMEI:1660", "77");
    let reply = c.open().await;
    let resp_uri = reply.header.resp_uri.clone().expect("a RespURI");
    let key = resp_uri.split("s=").nth(1).unwrap();
    assert_eq!(key.len(), 32, "128 bits in hex: {resp_uri}");
    let next_nonce = hdr_status(&reply).chal.unwrap().next_nonce.unwrap();
    let get = commands_named(&reply, "Get")[0].clone();

    // A stranger: the device's id and SessionID, no key (or a wrong one), no credential.
    let forged = c.answer(2, &reply, vec![status_for(&reply, &get, 200)], true);
    for url in [
        dms.handle.dm_url.clone(),
        format!("{}?s={}", dms.handle.dm_url, "0".repeat(32)),
    ] {
        let r = dms
            .client()
            .post(&url)
            .header("content-type", scomo_ads::syncml::CONTENT_TYPE)
            .body(codec::encode(&forged))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let answer = codec::decode(&r.bytes().await.unwrap(), &Limits::default()).unwrap();
        assert_eq!(hdr_status(&answer).code, 401, "{url}");
    }
    // The device, at its RespURI, goes on where it was (MsgID 2 is still the next).
    let inventory = Command::Results(Results {
        msg_ref: Some(reply.header.msg_id),
        cmd_ref: get.cmd_id(),
        items: vec![Item {
            source: Some(Location::uri("./SCOMO/Inventory/Deployed/app/Name")),
            data: Some("app".into()),
            ..Item::default()
        }],
        ..Results::default()
    });
    let reply2 = c
        .send(&c.answer(
            2,
            &reply,
            vec![status_for(&reply, &get, 200), inventory.clone()],
            true,
        ))
        .await;
    assert_eq!(hdr_status(&reply2).code, 200);
    let j = dms.wait_job(&job, 10).await;
    assert_eq!(j["state"], "succeeded", "{j:#}");

    // A client that ignores RespURI sends its credential in every message instead.
    let job = dms
        .create_job(json!({"device": "IMEI:1660", "operation": "inventory"}))
        .await;
    let c = RawClient::new(&dms, "IMEI:1660", "78");
    let reply = c
        .login("IMEI:1660", &auth::decode_nonce(&next_nonce), None)
        .await;
    assert_eq!(hdr_status(&reply).code, 212);
    let next_nonce = hdr_status(&reply).chal.unwrap().next_nonce.unwrap();
    let get = commands_named(&reply, "Get")[0].clone();
    let mut m = c.answer(
        2,
        &reply,
        vec![status_for(&reply, &get, 200), inventory],
        true,
    );
    m.header.cred = md5_cred("IMEI:1660", "dev-secret", &auth::decode_nonce(&next_nonce));
    let r = dms
        .client()
        .post(&dms.handle.dm_url)
        .header("content-type", scomo_ads::syncml::CONTENT_TYPE)
        .body(codec::encode(&m))
        .send()
        .await
        .unwrap();
    let answer = codec::decode(&r.bytes().await.unwrap(), &Limits::default()).unwrap();
    assert_eq!(hdr_status(&answer).code, 200, "{answer:#?}");
    let j = dms.wait_job(&job, 10).await;
    assert_eq!(j["state"], "succeeded", "{j:#}");
}

/// Item 7: the Download node is created with Add (the strict device refuses Replace of a node
/// it lacks), replaced when it exists (a second download of the same component), and its Exec
/// follows the writes; a refused Add ends the job with the device's status and revokes the
/// ticket minted for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scomo_nodes_are_added_and_a_refused_write_revokes_the_ticket() {
    let (dms, mut nodes) = start_stack(&[("edge-1", 1)], "alternate").await;
    let ads = nodes.remove(0);
    dms.add_component(
        &[("name", "fw"), ("version", "3.0"), ("manufacturer", "Acme")],
        pattern(200_000, 8),
    )
    .await;
    let _dev = start_strict(&dms, "IMEI:1670", "AAAAAA==", &[&ads], Default::default()).await;
    for _ in 0..2 {
        let id = dms
            .create_job(
                json!({"device": "IMEI:1670", "operation": "download_install",
                               "component": "fw", "delivery": "alternate"}),
            )
            .await;
        let j = dms.wait_job(&id, 60).await;
        assert_eq!(j["state"], "succeeded", "{j:#}");
        assert_in_order(
            &steps(&j),
            &[
                "ticket_minted",
                "download_requested",
                "operation_accepted",
                "device_result",
            ],
        );
    }

    let _refusing = start_strict(
        &dms,
        "IMEI:1671",
        "AAAAAA==",
        &[&ads],
        scomo_ads::device::Faults {
            refuse_adds: true,
            ..Default::default()
        },
    )
    .await;
    let id = dms
        .create_job(json!({"device": "IMEI:1671", "operation": "download",
                           "component": "fw", "delivery": "alternate"}))
        .await;
    let j = dms.wait_job(&id, 60).await;
    assert_eq!(j["state"], "failed", "{j:#}");
    let refused = timeline_step(&j, "device_refused");
    assert_eq!(refused["detail"], "Add ./SCOMO/Download/fw: status 405");
    assert!(
        !steps(&j).contains(&"download_requested".to_string()),
        "no Exec after a failed write: {j:#}"
    );
    let minted = timeline_step(&j, "ticket_minted");
    let ticket = minted["detail"]
        .as_str()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap();
    assert_eq!(ads.ticket(ticket).await["state"], "revoked");
}

/// Item 8 over the wire: a message with the standard DOCTYPE runs a session; one whose
/// DOCTYPE declares entities gets a SyncML 400 for its header (readable) rather than a bare
/// HTTP 400, and nothing declared is expanded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctypes_standard_accepted_others_answered_in_syncml() {
    let dms = start_dms().await;
    dms.provision("IMEI:1680", "dev-secret", None).await;
    let c = RawClient::new(&dms, "IMEI:1680", "1");
    let m = c.package1(1, md5_cred("IMEI:1680", "dev-secret", &[0, 0, 0, 0]), None);
    let xml = codec::encode(&m);
    let at = xml.find("<SyncML").unwrap();
    let post = |doctype: &str| {
        let body = format!("{}{doctype}\n{}", &xml[..at], &xml[at..]);
        dms.client()
            .post(&dms.handle.dm_url)
            .header("content-type", scomo_ads::syncml::CONTENT_TYPE)
            .body(body)
            .send()
    };
    let r = post(r#"<!DOCTYPE SyncML PUBLIC "-//SYNCML//DTD SyncML 1.2//EN" "http://www.openmobilealliance.org/tech/DTD/OMA-TS-DM_SyncML-V1_2.dtd">"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let reply = codec::decode(&r.bytes().await.unwrap(), &Limits::default()).unwrap();
    assert_eq!(hdr_status(&reply).code, 212);

    let r = post(r#"<!DOCTYPE SyncML [<!ENTITY x "boom">]>"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "answered in SyncML");
    let reply = codec::decode(&r.bytes().await.unwrap(), &Limits::default()).unwrap();
    let h = hdr_status(&reply);
    assert_eq!(h.code, 400);
    assert!(
        format!("{:?}", h.items).contains("DOCTYPE"),
        "the reason is given: {h:?}"
    );
}
