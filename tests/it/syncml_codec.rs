//! The SyncML DM codec against hand-written golden messages (parsed to the expected model and
//! re-encoded to equivalent XML), encode→decode identity on generated messages, and hostile
//! input refused with bounded work.

use proptest::prelude::*;
use scomo_ads::scomo;
use scomo_ads::syncml::codec::{decode, decode_header, encode, CodecError, Limits};
use scomo_ads::syncml::message::*;
use scomo_ads::syncml::tree::DevInfo;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/syncml/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn round_trips(m: &Message) {
    let again = decode(encode(m).as_bytes(), &Limits::default()).unwrap();
    assert_eq!(&again, m);
}

fn metinf(format: &str) -> Meta {
    Meta::format(format)
}

#[test]
fn package_1_with_devinfo() {
    let m = decode(&fixture("package1_devinfo.xml"), &Limits::default()).unwrap();
    let h = &m.header;
    assert_eq!(
        (h.ver_dtd.as_str(), h.ver_proto.as_str()),
        ("1.2", "DM/1.2")
    );
    assert_eq!(h.session_id, "1A2B");
    assert_eq!(h.msg_id, 1);
    assert_eq!(h.target, Location::uri("https://dms.example/dm"));
    assert_eq!(h.source.uri, "IMEI:356938035643809");
    assert_eq!(h.source.name.as_deref(), Some("IMEI:356938035643809"));
    let cred = h.cred.as_ref().unwrap();
    assert_eq!(cred.meta.type_.as_deref(), Some("syncml:auth-md5"));
    assert_eq!(cred.meta.format.as_deref(), Some("b64"));
    assert_eq!(cred.data, "4wwDLhHUtM0DNucJ3/D1UQ==");
    assert_eq!(h.meta.max_msg_size, Some(16384));
    assert_eq!(h.meta.max_obj_size, Some(4_194_304));
    assert!(m.final_);
    assert_eq!(m.commands.len(), 2);
    assert_eq!(
        m.commands[0],
        Command::Alert(Alert {
            cmd_id: 1,
            code: 1200,
            ..Alert::default()
        })
    );
    let Command::Replace(r) = &m.commands[1] else {
        panic!("second command is not Replace")
    };
    assert_eq!(r.cmd_id, 2);
    assert_eq!(
        r.items[0],
        Item::source("./DevInfo").with_meta(metinf("node"))
    );
    let info = DevInfo::from_items(&r.items).unwrap();
    assert_eq!(info.dev_id, "IMEI:356938035643809");
    assert_eq!(info.man, "Acme & Sons");
    assert_eq!(info.model, "Roadrunner-2");
    assert_eq!(info.dm_v, "1.2");
    assert_eq!(info.lang, "en-US");
    round_trips(&m);
}

#[test]
fn package_2_with_scomo_replace_and_exec() {
    let m = decode(&fixture("package2_scomo.xml"), &Limits::default()).unwrap();
    assert_eq!(
        m.header.resp_uri.as_deref(),
        Some("https://dms.example/dm?s=1A2B")
    );
    let Command::Status(hdr) = &m.commands[0] else {
        panic!("first command is not Status")
    };
    assert_eq!(
        (hdr.cmd_ref, hdr.msg_ref, hdr.cmd.as_str(), hdr.code),
        (0, 1, "SyncHdr", 212)
    );
    assert_eq!(hdr.target_refs, vec!["https://dms.example/dm"]);
    assert_eq!(hdr.source_refs, vec!["IMEI:356938035643809"]);
    let chal = hdr.chal.as_ref().unwrap();
    assert_eq!(chal.next_nonce.as_deref(), Some("MTIzNDU2Nzg5MGFiY2RlZg=="));
    assert_eq!(chal.type_.as_deref(), Some("syncml:auth-md5"));
    assert!(matches!(&m.commands[1], Command::Status(s) if s.cmd == "Alert" && s.code == 200));
    let Command::Replace(r) = &m.commands[3] else {
        panic!("no Replace")
    };
    assert_eq!(r.items.len(), 2);
    assert_eq!(
        r.items[0].target.as_ref().unwrap().uri,
        "./SCOMO/Download/pkg1/PkgURL"
    );
    assert!(r.items[0]
        .data
        .as_deref()
        .unwrap()
        .starts_with("https://ads.example:8443/d/"));
    let Command::Exec(e) = &m.commands[4] else {
        panic!("no Exec")
    };
    assert_eq!(e.correlator.as_deref(), Some("job-42"));
    let target = &e.items[0].target.as_ref().unwrap().uri;
    assert_eq!(
        scomo::parse_operation_path(target),
        Some((
            "./SCOMO/Download/pkg1".into(),
            scomo::Operation::DownloadInstall
        ))
    );
    round_trips(&m);
}

#[test]
fn generic_alert_with_scomo_results() {
    let m = decode(&fixture("generic_alert.xml"), &Limits::default()).unwrap();
    assert_eq!(m.header.session_id, "17");
    let Command::Alert(a) = &m.commands[1] else {
        panic!("no generic alert")
    };
    assert_eq!(a.code, 1226);
    let reports = scomo::operation_reports(a);
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0].correlator.as_deref(), Some("job-42"));
    assert_eq!(reports[0].result, 1200);
    assert_eq!(reports[0].identifier.as_deref(), Some("comp1-id"));
    assert_eq!(
        reports[0].target.as_deref(),
        Some("./SCOMO/Inventory/Deployed/comp1")
    );
    assert_eq!(reports[0].mark.as_deref(), Some("informational"));
    assert_eq!(
        reports[1].source.as_deref(),
        Some("./SCOMO/Inventory/Delivered/pkg2/Operations/Install")
    );
    assert_eq!(
        reports[1].result,
        scomo::ResultCode::FailedPackageValidation.code()
    );
    round_trips(&m);
    // Our own report encodes to something we (and the golden shape) parse the same way.
    let ours = scomo::operation_complete_item(
        "./SCOMO/Download/pkg1/Operations/DownloadInstall",
        Some("./SCOMO/Inventory/Deployed/comp1"),
        1200,
        Some("comp1-id"),
    );
    let alert = Alert {
        cmd_id: 2,
        correlator: Some("job-42".into()),
        code: 1226,
        items: vec![ours],
        ..Alert::default()
    };
    assert_eq!(scomo::operation_reports(&alert)[0], reports[0]);
}

#[test]
fn exec_inside_atomic_is_refused() {
    let m = Message {
        header: Header::default(),
        commands: vec![Command::Atomic(Container {
            cmd_id: 1,
            commands: vec![Command::Exec(Exec {
                cmd_id: 2,
                ..Exec::default()
            })],
            ..Container::default()
        })],
        final_: true,
    };
    assert!(matches!(
        decode(encode(&m).as_bytes(), &Limits::default()),
        Err(CodecError::Rule(_))
    ));
}

#[test]
fn an_entity_bomb_is_refused_without_expansion() {
    let mut bomb =
        String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE SyncML [\n<!ENTITY a \"aaaaaaaaaa\">\n");
    for i in 1..10 {
        bomb.push_str(&format!(
            "<!ENTITY {} \"{}\">\n",
            (b'a' + i) as char,
            format!("&{};", (b'a' + i - 1) as char).repeat(10)
        ));
    }
    bomb.push_str("]>\n<SyncML><SyncHdr/><SyncBody><Alert><CmdID>1</CmdID><Data>&j;</Data></Alert></SyncBody></SyncML>");
    assert_eq!(
        decode(bomb.as_bytes(), &Limits::default()),
        Err(CodecError::DocType)
    );
    // Without a DOCTYPE, an undeclared entity is an error, not an expansion.
    let undeclared = b"<SyncML><SyncHdr/><SyncBody><Alert><CmdID>1</CmdID><Data>&j;</Data></Alert></SyncBody></SyncML>";
    assert!(matches!(
        decode(undeclared, &Limits::default()),
        Err(CodecError::Xml(_))
    ));
}

/// Real clients start with SyncML's public DOCTYPE (issue 16, item 8): it is decoded (the DTD
/// is never fetched); anything else in a DOCTYPE is refused, yet the header of such a message
/// can still be read to answer it in SyncML.
#[test]
fn the_standard_doctype_is_accepted_and_no_other() {
    let body = std::fs::read_to_string("tests/fixtures/syncml/package1_devinfo.xml").unwrap();
    let start = body.find("<SyncML").unwrap();
    let with = |doctype: &str| format!("<?xml version=\"1.0\"?>\n{doctype}\n{}", &body[start..]);
    let plain = decode(&body.as_bytes()[start..], &Limits::default()).unwrap();
    for ok in [
        r#"<!DOCTYPE SyncML PUBLIC "-//SYNCML//DTD SyncML 1.2//EN" "http://www.openmobilealliance.org/tech/DTD/OMA-TS-DM_SyncML-V1_2.dtd">"#,
        r#"<!DOCTYPE SyncML PUBLIC "-//SYNCML//DTD SyncML 1.2//EN">"#,
        "<!DOCTYPE SyncML PUBLIC \"-//SYNCML//DTD SyncML 1.1//EN\"\n  \"http://www.syncml.org/docs/syncml_represent_v11_20020213.dtd\">",
    ] {
        assert_eq!(decode(with(ok).as_bytes(), &Limits::default()).unwrap(), plain, "{ok}");
    }
    for bad in [
        r#"<!DOCTYPE SyncML PUBLIC "-//SYNCML//DTD SyncML 1.2//EN" "x.dtd" [<!ENTITY e "x">]>"#,
        r#"<!DOCTYPE SyncML SYSTEM "file:///etc/passwd">"#,
        r#"<!DOCTYPE SyncML PUBLIC "-//EVIL//DTD//EN" "http://evil/x.dtd">"#,
        r#"<!DOCTYPE Other PUBLIC "-//SYNCML//DTD SyncML 1.2//EN">"#,
    ] {
        let msg = with(bad);
        assert_eq!(
            decode(msg.as_bytes(), &Limits::default()),
            Err(CodecError::DocType),
            "{bad}"
        );
        assert_eq!(
            decode_header(msg.as_bytes(), &Limits::default()).unwrap(),
            plain.header,
            "the header of a refused message stays readable: {bad}"
        );
    }
}

#[test]
fn deep_nesting_too_many_elements_and_oversize_are_refused() {
    let limits = Limits::default();
    let deep = format!("{}{}", "<a>".repeat(100_000), "</a>".repeat(100_000));
    assert!(deep.len() <= limits.max_bytes);
    assert_eq!(
        decode(deep.as_bytes(), &limits),
        Err(CodecError::TooDeep(limits.max_depth))
    );
    let wide = format!("<SyncML>{}</SyncML>", "<x/>".repeat(60_000));
    assert_eq!(
        decode(wide.as_bytes(), &limits),
        Err(CodecError::TooManyElements(limits.max_elements))
    );
    let big = vec![b' '; limits.max_bytes + 1];
    assert!(matches!(
        decode(&big, &limits),
        Err(CodecError::TooLarge { .. })
    ));
    for junk in [
        &b""[..],
        b"<",
        b"<SyncML>",
        b"\xff\xfe",
        b"<Other/>",
        b"<SyncML><SyncHdr/></SyncML>",
    ] {
        assert!(decode(junk, &limits).is_err());
    }
}

#[test]
fn missing_and_invalid_fields_are_named() {
    let text = String::from_utf8(fixture("package2_scomo.xml")).unwrap();
    let no_msgid = text.replace("<MsgID>1</MsgID>", "");
    assert_eq!(
        decode(no_msgid.as_bytes(), &Limits::default()),
        Err(CodecError::Missing("MsgID"))
    );
    let bad_cmdid = text.replace("<CmdID>5</CmdID>", "<CmdID>five</CmdID>");
    assert!(matches!(
        decode(bad_cmdid.as_bytes(), &Limits::default()),
        Err(CodecError::Invalid {
            element: "CmdID",
            ..
        })
    ));
    let unknown = text
        .replace("<Exec>", "<Frobnicate>")
        .replace("</Exec>", "</Frobnicate>");
    assert_eq!(
        decode(unknown.as_bytes(), &Limits::default()),
        Err(CodecError::UnknownCommand("Frobnicate".into()))
    );
}

// ------------------------------------------------------------ generated messages

fn text() -> impl Strategy<Value = String> {
    // No leading/trailing whitespace (the decoder trims, as field clients pad), XML-special
    // characters included to exercise escaping.
    prop_oneof![Just(String::new()), "[!-~]([ -~éü<>&'\"]{0,16}[!-~])?"]
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(text())
}

fn location() -> BoxedStrategy<Location> {
    (text(), opt_text())
        .prop_map(|(uri, name)| Location { uri, name })
        .boxed()
}

fn meta() -> BoxedStrategy<Meta> {
    (
        opt_text(),
        opt_text(),
        opt_text(),
        proptest::option::of(any::<u64>()),
        opt_text(),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(|(format, type_, mark, size, next_nonce, mm, mo)| Meta {
            format,
            type_,
            mark,
            size,
            next_nonce,
            max_msg_size: mm.map(u64::from),
            max_obj_size: mo.map(u64::from),
        })
        .boxed()
}

fn item() -> BoxedStrategy<Item> {
    (
        proptest::option::of(location()),
        proptest::option::of(location()),
        meta(),
        opt_text(),
        any::<bool>(),
    )
        .prop_map(|(target, source, meta, data, more_data)| Item {
            target,
            source,
            meta,
            data,
            more_data,
        })
        .boxed()
}

fn items() -> impl Strategy<Value = Vec<Item>> {
    proptest::collection::vec(item(), 0..3)
}

fn ic() -> BoxedStrategy<ItemCommand> {
    (any::<u32>(), any::<bool>(), meta(), items())
        .prop_map(|(cmd_id, no_resp, meta, items)| ItemCommand {
            cmd_id,
            no_resp,
            meta,
            items,
        })
        .boxed()
}

fn refs() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(text(), 0..2)
}

fn leaf_command() -> BoxedStrategy<Command> {
    prop_oneof![
        (
            any::<u32>(),
            any::<bool>(),
            opt_text(),
            any::<u16>(),
            items()
        )
            .prop_map(
                |(cmd_id, no_resp, correlator, code, items)| Command::Alert(Alert {
                    cmd_id,
                    no_resp,
                    correlator,
                    code,
                    items
                })
            ),
        ic().prop_map(Command::Add),
        ic().prop_map(Command::Replace),
        ic().prop_map(Command::Delete),
        ic().prop_map(Command::Copy),
        ic().prop_map(Command::Get),
        (any::<u32>(), any::<bool>(), opt_text(), meta(), items()).prop_map(
            |(cmd_id, no_resp, correlator, meta, items)| Command::Exec(Exec {
                cmd_id,
                no_resp,
                correlator,
                meta,
                items
            })
        ),
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            "[A-Za-z]{1,10}",
            refs(),
            refs(),
            proptest::option::of(meta()),
            any::<u16>(),
            items()
        )
            .prop_map(
                |(cmd_id, msg_ref, cmd_ref, cmd, target_refs, source_refs, chal, code, items)| {
                    Command::Status(Status {
                        cmd_id,
                        msg_ref,
                        cmd_ref,
                        cmd,
                        target_refs,
                        source_refs,
                        chal,
                        code,
                        items,
                    })
                }
            ),
        (
            any::<u32>(),
            proptest::option::of(any::<u32>()),
            any::<u32>(),
            meta(),
            refs(),
            refs(),
            items()
        )
            .prop_map(
                |(cmd_id, msg_ref, cmd_ref, meta, target_refs, source_refs, items)| {
                    Command::Results(Results {
                        cmd_id,
                        msg_ref,
                        cmd_ref,
                        meta,
                        target_refs,
                        source_refs,
                        items,
                    })
                }
            ),
    ]
    .boxed()
}

fn no_exec(c: &Command) -> bool {
    match c {
        Command::Exec(_) => false,
        Command::Sequence(s) | Command::Atomic(s) => s.commands.iter().all(no_exec),
        _ => true,
    }
}

fn command() -> BoxedStrategy<Command> {
    leaf_command()
        .prop_recursive(2, 8, 4, |inner| {
            (
                any::<u32>(),
                any::<bool>(),
                meta(),
                proptest::collection::vec(inner, 0..4),
                any::<bool>(),
            )
                .prop_map(|(cmd_id, no_resp, meta, commands, atomic)| {
                    let c = Container {
                        cmd_id,
                        no_resp,
                        meta,
                        commands,
                    };
                    if atomic && c.commands.iter().all(no_exec) {
                        Command::Atomic(c)
                    } else {
                        Command::Sequence(c)
                    }
                })
        })
        .boxed()
}

fn message() -> BoxedStrategy<Message> {
    (
        (text(), text(), text(), any::<u32>(), location(), location()),
        (
            opt_text(),
            any::<bool>(),
            proptest::option::of((meta(), text())),
            meta(),
        ),
        proptest::collection::vec(command(), 0..6),
        any::<bool>(),
    )
        .prop_map(
            |(
                (ver_dtd, ver_proto, session_id, msg_id, target, source),
                (resp_uri, no_resp, cred, meta),
                commands,
                final_,
            )| {
                Message {
                    header: Header {
                        ver_dtd,
                        ver_proto,
                        session_id,
                        msg_id,
                        target,
                        source,
                        resp_uri,
                        no_resp,
                        cred: cred.map(|(meta, data)| Cred { meta, data }),
                        meta,
                    },
                    commands,
                    final_,
                }
            },
        )
        .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn encode_then_decode_is_identity(m in message()) {
        let xml = encode(&m);
        let back = decode(xml.as_bytes(), &Limits::default());
        prop_assert_eq!(back, Ok(m), "{}", xml);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes, &Limits::default());
        let _ = scomo_ads::syncml::wbxml::decode(&bytes, &Limits::default());
    }

    /// WBXML carries exactly what XML does.
    #[test]
    fn wbxml_encode_then_decode_is_identity(m in message()) {
        let w = scomo_ads::syncml::wbxml::encode(&m);
        prop_assert_eq!(scomo_ads::syncml::wbxml::decode(&w, &Limits::default()), Ok(m));
    }
}
