//! SyncML DM XML (`application/vnd.syncml.dm+xml`) to [`Message`] and back.
//!
//! Decoding is two steps: quick-xml events into a small element tree under hard limits (bytes,
//! depth, element count; only SyncML's standard DOCTYPE, never fetched, so no entity can be declared, let alone expanded),
//! then the tree into the typed model by local names, so namespace prefixes, inline `xmlns`
//! on every meta element, single or double quotes and pretty-printing all read the same.
//! Encoding writes the canonical form: no prefixes, `syncml:metinf` declared on meta elements.

use quick_xml::escape::escape;
use quick_xml::events::Event;
use quick_xml::Reader;

use super::message::*;

/// Decoder limits: what a hostile peer can make us spend.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_depth: usize,
    pub max_elements: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 20,
            max_depth: 32,
            max_elements: 20_000,
        }
    }
}

/// Why a message could not be decoded (each maps to a SyncML or HTTP status upstream).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("message of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("message nests deeper than {0} elements")]
    TooDeep(usize),
    #[error("message has more than {0} elements")]
    TooManyElements(usize),
    #[error("message is not UTF-8")]
    NotUtf8,
    #[error("only the standard SyncML DOCTYPE is accepted (no internal subset, no entities)")]
    DocType,
    #[error("malformed XML: {0}")]
    Xml(String),
    #[error("root element is <{0}>, not <SyncML>")]
    NotSyncMl(String),
    #[error("required element <{0}> is missing")]
    Missing(&'static str),
    #[error("<{element}> has an invalid value {value:?}")]
    Invalid {
        element: &'static str,
        value: String,
    },
    #[error("unsupported command <{0}>")]
    UnknownCommand(String),
    #[error("command rule violated: {0}")]
    Rule(&'static str),
}

/// A parsed element: local name, text (unescaped, CDATA included) and children. The XML
/// decoder and the WBXML decoder ([`super::wbxml`]) both build it; one mapping turns it into
/// the typed model.
#[derive(Debug, Default)]
pub(super) struct El {
    pub(super) name: String,
    pub(super) text: String,
    pub(super) children: Vec<El>,
}

impl El {
    pub(super) fn child(&self, name: &str) -> Option<&El> {
        self.children.iter().find(|c| c.name == name)
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a El> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    fn text_of(&self, name: &str) -> Option<String> {
        self.child(name).map(|c| c.text.trim().to_string())
    }

    fn has(&self, name: &str) -> bool {
        self.child(name).is_some()
    }

    /// The content as text: the text itself, or the child elements rendered back to XML
    /// (clients put `<ResultCode>…</ResultCode>` straight inside `Data`).
    fn content(&self) -> String {
        if self.children.is_empty() {
            return self.text.trim().to_string();
        }
        let mut out = String::new();
        for c in &self.children {
            render(c, &mut out);
        }
        out
    }
}

fn render(el: &El, out: &mut String) {
    out.push('<');
    out.push_str(&el.name);
    out.push('>');
    out.push_str(&escape(el.text.trim()));
    for c in &el.children {
        render(c, out);
    }
    out.push_str("</");
    out.push_str(&el.name);
    out.push('>');
}

fn local_name(raw: &[u8]) -> String {
    let local = match raw.iter().rposition(|&b| b == b':') {
        Some(i) => &raw[i + 1..],
        None => raw,
    };
    String::from_utf8_lossy(local).into_owned()
}

/// What a `<!DOCTYPE>` may be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DocTypes {
    /// Only SyncML's public one (`SyncML PUBLIC "-//SYNCML//DTD SyncML 1.x//EN" "…"`), which
    /// real clients send; its DTD is never fetched.
    Standard,
    /// Any, skipped unread: reading a refused message's header to answer it in SyncML. Nothing
    /// declared in it is ever expanded (quick-xml expands no declared entity; a reference to
    /// one is an error).
    Skip,
}

/// Whether a DOCTYPE's content (between `<!DOCTYPE` and `>`) is SyncML's standard one:
/// `SyncML PUBLIC "<public id>" ["<system id>"]`, with no internal subset.
fn standard_doctype(content: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(content) else {
        return false;
    };
    if text.contains('[') || text.contains('<') {
        return false;
    }
    let mut rest = text.trim();
    let word = |rest: &mut &str| -> Option<String> {
        let r = rest.trim_start();
        let (tok, tail) = if let Some(q) = r.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_string(), &q[end + 1..])
        } else {
            let end = r.find(char::is_whitespace).unwrap_or(r.len());
            (r[..end].to_string(), &r[end..])
        };
        *rest = tail;
        Some(tok)
    };
    let root = word(&mut rest);
    let kind = word(&mut rest);
    let public_id = word(&mut rest).unwrap_or_default();
    let _system_id = word(&mut rest);
    root.as_deref() == Some("SyncML")
        && kind.as_deref() == Some("PUBLIC")
        && public_id.starts_with("-//SYNCML//DTD SyncML ")
        && rest.trim().is_empty()
}

/// The element tree of an XML message (the WBXML encoder starts from our own XML).
pub(super) fn xml_tree(bytes: &[u8], limits: &Limits) -> Result<El, CodecError> {
    parse_tree(bytes, limits, DocTypes::Standard)
}

fn parse_tree(bytes: &[u8], limits: &Limits, doctypes: DocTypes) -> Result<El, CodecError> {
    if bytes.len() > limits.max_bytes {
        return Err(CodecError::TooLarge {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| CodecError::NotUtf8)?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<El> = Vec::new();
    let mut root: Option<El> = None;
    let mut elements = 0usize;
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| CodecError::Xml(e.to_string()))?;
        match ev {
            Event::Start(e) => {
                elements += 1;
                if elements > limits.max_elements {
                    return Err(CodecError::TooManyElements(limits.max_elements));
                }
                if stack.len() >= limits.max_depth {
                    return Err(CodecError::TooDeep(limits.max_depth));
                }
                stack.push(El {
                    name: local_name(e.name().as_ref()),
                    ..El::default()
                });
            }
            Event::Empty(e) => {
                elements += 1;
                if elements > limits.max_elements {
                    return Err(CodecError::TooManyElements(limits.max_elements));
                }
                let el = El {
                    name: local_name(e.name().as_ref()),
                    ..El::default()
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None if root.is_none() => root = Some(el),
                    None => return Err(CodecError::Xml("content after the root element".into())),
                }
            }
            Event::End(_) => {
                let el = stack
                    .pop()
                    .ok_or_else(|| CodecError::Xml("unbalanced end tag".into()))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None if root.is_none() => root = Some(el),
                    None => return Err(CodecError::Xml("content after the root element".into())),
                }
            }
            Event::Text(t) => {
                let s = t.unescape().map_err(|e| CodecError::Xml(e.to_string()))?;
                match stack.last_mut() {
                    Some(cur) => cur.text.push_str(&s),
                    None if s.trim().is_empty() => {}
                    None => return Err(CodecError::Xml("text outside the root element".into())),
                }
            }
            Event::CData(c) => {
                let raw = c.into_inner();
                let s = std::str::from_utf8(&raw).map_err(|_| CodecError::NotUtf8)?;
                if let Some(cur) = stack.last_mut() {
                    cur.text.push_str(s);
                }
            }
            Event::DocType(d) => {
                if doctypes == DocTypes::Standard && !standard_doctype(&d) {
                    return Err(CodecError::DocType);
                }
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(CodecError::Xml(
            "unclosed elements at end of message".into(),
        ));
    }
    root.ok_or(CodecError::Xml("empty document".into()))
}

fn num<T: std::str::FromStr>(element: &'static str, s: &str) -> Result<T, CodecError> {
    s.trim().parse().map_err(|_| CodecError::Invalid {
        element,
        value: s.chars().take(40).collect(),
    })
}

fn opt_num<T: std::str::FromStr>(el: &El, name: &'static str) -> Result<Option<T>, CodecError> {
    el.text_of(name).map(|s| num(name, &s)).transpose()
}

fn req_text(el: &El, name: &'static str) -> Result<String, CodecError> {
    el.text_of(name).ok_or(CodecError::Missing(name))
}

fn location(el: Option<&El>) -> Option<Location> {
    let el = el?;
    Some(Location {
        uri: el.text_of("LocURI").unwrap_or_default(),
        name: el.text_of("LocName"),
    })
}

fn meta(el: Option<&El>) -> Result<Meta, CodecError> {
    let Some(el) = el else {
        return Ok(Meta::default());
    };
    // A few clients wrap the metinf elements in <MetInf>.
    let el = el.child("MetInf").unwrap_or(el);
    Ok(Meta {
        format: el.text_of("Format"),
        type_: el.text_of("Type"),
        mark: el.text_of("Mark"),
        size: opt_num(el, "Size")?,
        next_nonce: el.text_of("NextNonce"),
        max_msg_size: opt_num(el, "MaxMsgSize")?,
        max_obj_size: opt_num(el, "MaxObjSize")?,
    })
}

fn items(el: &El) -> Result<Vec<Item>, CodecError> {
    el.all("Item")
        .map(|i| {
            Ok(Item {
                target: location(i.child("Target")),
                source: location(i.child("Source")),
                meta: meta(i.child("Meta"))?,
                data: i.child("Data").map(El::content),
                more_data: i.has("MoreData"),
            })
        })
        .collect()
}

fn cmd_id(el: &El) -> Result<u32, CodecError> {
    num("CmdID", &req_text(el, "CmdID")?)
}

fn item_command(el: &El) -> Result<ItemCommand, CodecError> {
    Ok(ItemCommand {
        cmd_id: cmd_id(el)?,
        no_resp: el.has("NoResp"),
        meta: meta(el.child("Meta"))?,
        items: items(el)?,
    })
}

fn command(el: &El) -> Result<Command, CodecError> {
    Ok(match el.name.as_str() {
        "Alert" => Command::Alert(Alert {
            cmd_id: cmd_id(el)?,
            no_resp: el.has("NoResp"),
            correlator: el.text_of("Correlator"),
            code: num("Data", &req_text(el, "Data")?)?,
            items: items(el)?,
        }),
        "Add" => Command::Add(item_command(el)?),
        "Replace" => Command::Replace(item_command(el)?),
        "Delete" => Command::Delete(item_command(el)?),
        "Copy" => Command::Copy(item_command(el)?),
        "Get" => Command::Get(item_command(el)?),
        "Exec" => Command::Exec(Exec {
            cmd_id: cmd_id(el)?,
            no_resp: el.has("NoResp"),
            correlator: el.text_of("Correlator"),
            meta: meta(el.child("Meta"))?,
            items: items(el)?,
        }),
        "Sequence" | "Atomic" => {
            let c = Container {
                cmd_id: cmd_id(el)?,
                no_resp: el.has("NoResp"),
                meta: meta(el.child("Meta"))?,
                commands: el
                    .children
                    .iter()
                    .filter(|c| !matches!(c.name.as_str(), "CmdID" | "NoResp" | "Meta"))
                    .map(command)
                    .collect::<Result<_, _>>()?,
            };
            if el.name == "Atomic" {
                Command::Atomic(c)
            } else {
                Command::Sequence(c)
            }
        }
        "Status" => Command::Status(Status {
            cmd_id: cmd_id(el)?,
            msg_ref: num(
                "MsgRef",
                &el.text_of("MsgRef").unwrap_or_else(|| "0".into()),
            )?,
            cmd_ref: num("CmdRef", &req_text(el, "CmdRef")?)?,
            cmd: req_text(el, "Cmd")?,
            target_refs: el
                .all("TargetRef")
                .map(|e| e.text.trim().to_string())
                .collect(),
            source_refs: el
                .all("SourceRef")
                .map(|e| e.text.trim().to_string())
                .collect(),
            chal: el
                .child("Chal")
                .map(|c| meta(c.child("Meta")))
                .transpose()?,
            code: num("Data", &req_text(el, "Data")?)?,
            items: items(el)?,
        }),
        "Results" => Command::Results(Results {
            cmd_id: cmd_id(el)?,
            msg_ref: opt_num(el, "MsgRef")?,
            cmd_ref: num("CmdRef", &req_text(el, "CmdRef")?)?,
            meta: meta(el.child("Meta"))?,
            target_refs: el
                .all("TargetRef")
                .map(|e| e.text.trim().to_string())
                .collect(),
            source_refs: el
                .all("SourceRef")
                .map(|e| e.text.trim().to_string())
                .collect(),
            items: items(el)?,
        }),
        other => return Err(CodecError::UnknownCommand(other.chars().take(40).collect())),
    })
}

/// Decodes only the header: when the body is malformed, a server still needs the session to
/// answer with a SyncML status instead of dropping the message.
pub fn decode_header(bytes: &[u8], limits: &Limits) -> Result<Header, CodecError> {
    header_from_tree(&parse_tree(bytes, limits, DocTypes::Skip)?)
}

/// The header of a decoded element tree.
pub(super) fn header_from_tree(root: &El) -> Result<Header, CodecError> {
    if root.name != "SyncML" {
        return Err(CodecError::NotSyncMl(root.name.chars().take(40).collect()));
    }
    header(
        root.child("SyncHdr")
            .ok_or(CodecError::Missing("SyncHdr"))?,
    )
}

/// Decodes a message under `limits`.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Message, CodecError> {
    message_from_tree(&parse_tree(bytes, limits, DocTypes::Standard)?)
}

/// The message of a decoded element tree, checked against the structural rules.
pub(super) fn message_from_tree(root: &El) -> Result<Message, CodecError> {
    if root.name != "SyncML" {
        return Err(CodecError::NotSyncMl(root.name.chars().take(40).collect()));
    }
    let hdr = root
        .child("SyncHdr")
        .ok_or(CodecError::Missing("SyncHdr"))?;
    let body = root
        .child("SyncBody")
        .ok_or(CodecError::Missing("SyncBody"))?;
    let header = header(hdr)?;
    let mut commands = Vec::new();
    let mut final_ = false;
    for c in &body.children {
        if c.name == "Final" {
            final_ = true;
        } else {
            commands.push(command(c)?);
        }
    }
    let m = Message {
        header,
        commands,
        final_,
    };
    check_rules(&m)?;
    Ok(m)
}

fn header(hdr: &El) -> Result<Header, CodecError> {
    Ok(Header {
        ver_dtd: req_text(hdr, "VerDTD")?,
        ver_proto: req_text(hdr, "VerProto")?,
        session_id: req_text(hdr, "SessionID")?,
        msg_id: num("MsgID", &req_text(hdr, "MsgID")?)?,
        target: location(hdr.child("Target")).ok_or(CodecError::Missing("Target"))?,
        source: location(hdr.child("Source")).ok_or(CodecError::Missing("Source"))?,
        resp_uri: hdr.text_of("RespURI"),
        no_resp: hdr.has("NoResp"),
        cred: hdr
            .child("Cred")
            .map(|c| {
                Ok::<_, CodecError>(Cred {
                    meta: meta(c.child("Meta"))?,
                    data: c.text_of("Data").unwrap_or_default(),
                })
            })
            .transpose()?,
        meta: meta(hdr.child("Meta"))?,
    })
}

/// The structural rules of OMA-DM-NOTES.md §2 that a decoder can see.
pub fn check_rules(m: &Message) -> Result<(), CodecError> {
    fn no_exec(cmds: &[Command]) -> bool {
        cmds.iter().all(|c| match c {
            Command::Exec(_) => false,
            Command::Sequence(s) | Command::Atomic(s) => no_exec(&s.commands),
            _ => true,
        })
    }
    fn walk(cmds: &[Command]) -> Result<(), CodecError> {
        for c in cmds {
            match c {
                Command::Atomic(a) if !no_exec(&a.commands) => {
                    return Err(CodecError::Rule("Exec is not allowed inside Atomic"))
                }
                Command::Atomic(a) | Command::Sequence(a) => walk(&a.commands)?,
                _ => {}
            }
        }
        Ok(())
    }
    walk(&m.commands)
}

// ---------------------------------------------------------------- encoding

struct W(String);

impl W {
    fn open(&mut self, name: &str) {
        self.0.push('<');
        self.0.push_str(name);
        self.0.push('>');
    }
    fn close(&mut self, name: &str) {
        self.0.push_str("</");
        self.0.push_str(name);
        self.0.push('>');
    }
    fn empty(&mut self, name: &str) {
        self.0.push('<');
        self.0.push_str(name);
        self.0.push_str("/>");
    }
    fn text(&mut self, name: &str, value: &str) {
        self.open(name);
        self.0.push_str(&escape(value));
        self.close(name);
    }
    fn metinf(&mut self, name: &str, value: &str) {
        self.0.push('<');
        self.0.push_str(name);
        self.0.push_str(" xmlns=\"syncml:metinf\">");
        self.0.push_str(&escape(value));
        self.close(name);
    }
    fn location(&mut self, name: &str, l: &Location) {
        self.open(name);
        self.text("LocURI", &l.uri);
        if let Some(n) = &l.name {
            self.text("LocName", n);
        }
        self.close(name);
    }
    fn meta_fields(&mut self, m: &Meta) {
        if let Some(v) = &m.format {
            self.metinf("Format", v);
        }
        if let Some(v) = &m.type_ {
            self.metinf("Type", v);
        }
        if let Some(v) = &m.mark {
            self.metinf("Mark", v);
        }
        if let Some(v) = m.size {
            self.metinf("Size", &v.to_string());
        }
        if let Some(v) = &m.next_nonce {
            self.metinf("NextNonce", v);
        }
        if let Some(v) = m.max_msg_size {
            self.metinf("MaxMsgSize", &v.to_string());
        }
        if let Some(v) = m.max_obj_size {
            self.metinf("MaxObjSize", &v.to_string());
        }
    }
    fn meta(&mut self, m: &Meta) {
        if m.is_empty() {
            return;
        }
        self.open("Meta");
        self.meta_fields(m);
        self.close("Meta");
    }
    fn head(&mut self, cmd_id: u32, no_resp: bool) {
        self.text("CmdID", &cmd_id.to_string());
        if no_resp {
            self.empty("NoResp");
        }
    }
    fn items(&mut self, items: &[Item]) {
        for i in items {
            self.open("Item");
            if let Some(t) = &i.target {
                self.location("Target", t);
            }
            if let Some(s) = &i.source {
                self.location("Source", s);
            }
            self.meta(&i.meta);
            if let Some(d) = &i.data {
                self.text("Data", d);
            }
            if i.more_data {
                self.empty("MoreData");
            }
            self.close("Item");
        }
    }
    fn command(&mut self, c: &Command) {
        let name = c.name();
        self.open(name);
        match c {
            Command::Alert(a) => {
                self.head(a.cmd_id, a.no_resp);
                if let Some(x) = &a.correlator {
                    self.text("Correlator", x);
                }
                self.text("Data", &a.code.to_string());
                self.items(&a.items);
            }
            Command::Add(x)
            | Command::Replace(x)
            | Command::Delete(x)
            | Command::Copy(x)
            | Command::Get(x) => {
                self.head(x.cmd_id, x.no_resp);
                self.meta(&x.meta);
                self.items(&x.items);
            }
            Command::Exec(e) => {
                self.head(e.cmd_id, e.no_resp);
                if let Some(x) = &e.correlator {
                    self.text("Correlator", x);
                }
                self.meta(&e.meta);
                self.items(&e.items);
            }
            Command::Sequence(s) | Command::Atomic(s) => {
                self.head(s.cmd_id, s.no_resp);
                self.meta(&s.meta);
                for inner in &s.commands {
                    self.command(inner);
                }
            }
            Command::Status(s) => {
                self.text("CmdID", &s.cmd_id.to_string());
                self.text("MsgRef", &s.msg_ref.to_string());
                self.text("CmdRef", &s.cmd_ref.to_string());
                self.text("Cmd", &s.cmd);
                for t in &s.target_refs {
                    self.text("TargetRef", t);
                }
                for t in &s.source_refs {
                    self.text("SourceRef", t);
                }
                if let Some(ch) = &s.chal {
                    self.open("Chal");
                    self.open("Meta");
                    self.meta_fields(ch);
                    self.close("Meta");
                    self.close("Chal");
                }
                self.text("Data", &s.code.to_string());
                self.items(&s.items);
            }
            Command::Results(r) => {
                self.text("CmdID", &r.cmd_id.to_string());
                if let Some(m) = r.msg_ref {
                    self.text("MsgRef", &m.to_string());
                }
                self.text("CmdRef", &r.cmd_ref.to_string());
                self.meta(&r.meta);
                for t in &r.target_refs {
                    self.text("TargetRef", t);
                }
                for t in &r.source_refs {
                    self.text("SourceRef", t);
                }
                self.items(&r.items);
            }
        }
        self.close(name);
    }
}

/// Encodes a message in the canonical form.
pub fn encode(m: &Message) -> String {
    let mut w = W(String::with_capacity(1024));
    w.0.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<SyncML xmlns=\"SYNCML:SYNCML1.2\">");
    let h = &m.header;
    w.open("SyncHdr");
    w.text("VerDTD", &h.ver_dtd);
    w.text("VerProto", &h.ver_proto);
    w.text("SessionID", &h.session_id);
    w.text("MsgID", &h.msg_id.to_string());
    w.location("Target", &h.target);
    w.location("Source", &h.source);
    if let Some(r) = &h.resp_uri {
        w.text("RespURI", r);
    }
    if h.no_resp {
        w.empty("NoResp");
    }
    if let Some(c) = &h.cred {
        w.open("Cred");
        w.meta(&c.meta);
        w.text("Data", &c.data);
        w.close("Cred");
    }
    w.meta(&h.meta);
    w.close("SyncHdr");
    w.open("SyncBody");
    for c in &m.commands {
        w.command(c);
    }
    if m.final_ {
        w.empty("Final");
    }
    w.close("SyncBody");
    w.close("SyncML");
    w.0
}
