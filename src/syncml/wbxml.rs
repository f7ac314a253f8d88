//! SyncML DM in WBXML (`application/vnd.syncml.dm+wbxml`): the binary form most shipped
//! clients post, a third of the XML's size. Both directions go through the same typed
//! [`Message`] as the XML codec, so the session engine never knows which encoding it speaks.
//!
//! Decoding reads WBXML 1.1–1.3 (version, public id inline or in the string table, UTF-8,
//! string table) into the XML decoder's element tree, under the same limits (bytes, depth,
//! elements; the string table is part of the bytes), then maps it with the XML decoder's
//! mapping. Tags come from three code pages: SyncML (0), MetInf (1) and DevInf (2), switched
//! with `SWITCH_PAGE`. Strings are inline or string-table references; `OPAQUE` data is text,
//! except in an item whose format is `bin`: those are the raw bytes, which the model carries
//! as base64 (format `b64`) like the XML form does.
//!
//! Encoding writes WBXML 1.2 with the SyncML 1.2 public id, inline strings, and the bytes of
//! base64 items as `OPAQUE` with format `bin`, so large-object chunks are never inflated.
//! Malformed input is an error, never a panic.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::codec::{self, CodecError, El, Limits};
use super::message::Message;

/// Content type of SyncML DM WBXML messages.
pub const CONTENT_TYPE: &str = "application/vnd.syncml.dm+wbxml";
/// The SyncML 1.1 name of the same, still sent by older clients.
pub const CONTENT_TYPE_LEGACY: &str = "application/vnd.syncml+wbxml";

/// `-//SYNCML//DTD SyncML 1.2//EN`.
const PUBLIC_ID_SYNCML_12: u32 = 0x1201;
/// SyncML 1.1 and 1.0 (`-//SYNCML//DTD SyncML 1.1//EN`, `… 1.0//EN`).
const PUBLIC_IDS_SYNCML_OLD: [u32; 2] = [0x0FD3, 0x0FD1];
const FPI_PREFIX: &str = "-//SYNCML//DTD SyncML";
const CHARSET_UTF8: u32 = 106;

const SWITCH_PAGE: u8 = 0x00;
const END: u8 = 0x01;
const ENTITY: u8 = 0x02;
const STR_I: u8 = 0x03;
const LITERAL: u8 = 0x04;
const STR_T: u8 = 0x83;
const OPAQUE: u8 = 0xC3;
const HAS_CONTENT: u8 = 0x40;
const HAS_ATTRIBUTES: u8 = 0x80;

/// Code page 0: SyncML, tokens from 0x05.
const SYNCML: [&str; 56] = [
    "Add",
    "Alert",
    "Archive",
    "Atomic",
    "Chal",
    "Cmd",
    "CmdID",
    "CmdRef",
    "Copy",
    "Cred",
    "Data",
    "Delete",
    "Exec",
    "Final",
    "Get",
    "Item",
    "Lang",
    "LocName",
    "LocURI",
    "Map",
    "MapItem",
    "Meta",
    "MsgID",
    "MsgRef",
    "NoResp",
    "NoResults",
    "Put",
    "Replace",
    "RespURI",
    "Results",
    "Search",
    "Sequence",
    "SessionID",
    "SftDel",
    "Source",
    "SourceRef",
    "Status",
    "Sync",
    "SyncBody",
    "SyncHdr",
    "SyncML",
    "Target",
    "TargetRef",
    "",
    "VerDTD",
    "VerProto",
    "NumberOfChanges",
    "MoreData",
    "Field",
    "Filter",
    "Record",
    "FilterType",
    "SourceParent",
    "TargetParent",
    "Move",
    "Correlator",
];
/// Code page 1: MetInf, tokens from 0x05.
const METINF: [&str; 18] = [
    "Anchor",
    "EMI",
    "Format",
    "FreeID",
    "FreeMem",
    "Last",
    "Mark",
    "MaxMsgSize",
    "Mem",
    "MetInf",
    "Next",
    "NextNonce",
    "SharedMem",
    "Size",
    "Type",
    "Version",
    "MaxObjSize",
    "FieldLevel",
];
/// Code page 2: DevInf, tokens from 0x05.
const DEVINF: [&str; 48] = [
    "CTCap",
    "CTType",
    "DataStore",
    "DataType",
    "DevID",
    "DevInf",
    "DevTyp",
    "DisplayName",
    "DSMem",
    "Ext",
    "FwV",
    "HwV",
    "Man",
    "MaxGUIDSize",
    "MaxID",
    "MaxMem",
    "Mod",
    "OEM",
    "ParamName",
    "PropName",
    "Rx",
    "Rx-Pref",
    "SharedMem",
    "MaxSize",
    "SourceRef",
    "SwV",
    "SyncCap",
    "SyncType",
    "Tx",
    "Tx-Pref",
    "ValEnum",
    "VerCT",
    "VerDTD",
    "XNam",
    "XVal",
    "UTC",
    "SupportNumberOfChanges",
    "SupportLargeObjs",
    "Property",
    "PropParam",
    "MaxOccur",
    "NoTruncate",
    "",
    "Filter-Rx",
    "FilterCap",
    "FilterKeyword",
    "FieldLevel",
    "SupportHierarchicalSync",
];

fn page(n: u8) -> Option<&'static [&'static str]> {
    match n {
        0 => Some(&SYNCML),
        1 => Some(&METINF),
        2 => Some(&DEVINF),
        _ => None,
    }
}

fn malformed(why: impl Into<String>) -> CodecError {
    CodecError::Xml(format!("WBXML: {}", why.into()))
}

/// A cursor over the message with the limits' byte budget already checked.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, CodecError> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| malformed("message ends early"))?;
        self.at += 1;
        Ok(b)
    }

    /// A multi-byte unsigned integer: 7 bits a byte, high bit set on all but the last; at most
    /// five bytes (32 bits).
    fn mb_u_int32(&mut self) -> Result<u32, CodecError> {
        let mut v: u32 = 0;
        for _ in 0..5 {
            let b = self.byte()?;
            v = v
                .checked_mul(128)
                .ok_or_else(|| malformed("integer over 32 bits"))?
                | u32::from(b & 0x7f);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(malformed("integer over 32 bits"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| malformed("length past the end of the message"))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// An inline string, up to its NUL.
    fn cstr(&mut self) -> Result<&'a [u8], CodecError> {
        let rest = &self.bytes[self.at..];
        let n = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| malformed("unterminated string"))?;
        self.at += n + 1;
        Ok(&rest[..n])
    }
}

fn utf8(b: &[u8]) -> Result<&str, CodecError> {
    std::str::from_utf8(b).map_err(|_| CodecError::NotUtf8)
}

/// The NUL-terminated string at `offset` in the string table.
fn table_str(table: &[u8], offset: u32) -> Result<&str, CodecError> {
    let rest = table
        .get(offset as usize..)
        .ok_or_else(|| malformed("string table reference out of range"))?;
    let n = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| malformed("unterminated string in the string table"))?;
    utf8(&rest[..n])
}

/// Decodes a WBXML message under `limits`.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Message, CodecError> {
    codec::message_from_tree(&tree(bytes, limits)?)
}

/// Decodes only the header (to answer a message whose body is refused).
pub fn decode_header(bytes: &[u8], limits: &Limits) -> Result<super::message::Header, CodecError> {
    codec::header_from_tree(&tree(bytes, limits)?)
}

fn tree(bytes: &[u8], limits: &Limits) -> Result<El, CodecError> {
    if bytes.len() > limits.max_bytes {
        return Err(CodecError::TooLarge {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let mut r = Reader { bytes, at: 0 };
    let version = r.byte()?;
    if !(1..=3).contains(&version) {
        return Err(malformed(format!(
            "version 1.{version} (1.1 to 1.3 are read)"
        )));
    }
    let public_id = r.mb_u_int32()?;
    // 0: the public id is a string in the table, at this index.
    let fpi_index = if public_id == 0 {
        Some(r.mb_u_int32()?)
    } else {
        None
    };
    let charset = r.mb_u_int32()?;
    if charset != CHARSET_UTF8 && charset != 0 && charset != 3 {
        return Err(malformed(format!("charset {charset} (UTF-8 is read)")));
    }
    let table_len = r.mb_u_int32()? as usize;
    let table = r.take(table_len)?;
    match fpi_index {
        Some(i) => {
            let fpi = table_str(table, i)?;
            if !fpi.starts_with(FPI_PREFIX) {
                return Err(CodecError::NotSyncMl(fpi.chars().take(40).collect()));
            }
        }
        None if public_id == PUBLIC_ID_SYNCML_12 || PUBLIC_IDS_SYNCML_OLD.contains(&public_id) => {}
        // 1 is "unknown": the root element decides.
        None if public_id == 1 => {}
        None => {
            return Err(CodecError::NotSyncMl(format!("public id {public_id:#x}")));
        }
    }

    let mut code_page: u8 = 0;
    let mut stack: Vec<El> = Vec::new();
    let mut root: Option<El> = None;
    let mut elements = 0usize;
    while r.at < bytes.len() {
        let token = r.byte()?;
        match token {
            SWITCH_PAGE => {
                code_page = r.byte()?;
                if page(code_page).is_none() {
                    return Err(malformed(format!("unknown code page {code_page}")));
                }
            }
            END => {
                let el = stack
                    .pop()
                    .ok_or_else(|| malformed("END without an open element"))?;
                close(&mut stack, &mut root, el)?;
            }
            STR_I => {
                let s = utf8(r.cstr()?)?;
                text(&mut stack, s)?;
            }
            STR_T => {
                let offset = r.mb_u_int32()?;
                text(&mut stack, table_str(table, offset)?)?;
            }
            ENTITY => {
                let code = r.mb_u_int32()?;
                let c = char::from_u32(code).ok_or_else(|| malformed("entity is no character"))?;
                text(&mut stack, c.encode_utf8(&mut [0; 4]))?;
            }
            OPAQUE => {
                let n = r.mb_u_int32()? as usize;
                let raw = r.take(n)?;
                opaque(&mut stack, raw)?;
            }
            t if t & 0x3f >= 5 || t & 0x3f == LITERAL => {
                if t & HAS_ATTRIBUTES != 0 {
                    return Err(malformed("attributes (SyncML has none)"));
                }
                let name = if t & 0x3f == LITERAL {
                    let offset = r.mb_u_int32()?;
                    table_str(table, offset)?.to_string()
                } else {
                    let names = page(code_page).unwrap_or(&SYNCML);
                    let name = names
                        .get(usize::from((t & 0x3f) - 5))
                        .filter(|n| !n.is_empty())
                        .ok_or_else(|| {
                            malformed(format!("unknown tag {:#04x} on page {code_page}", t & 0x3f))
                        })?;
                    (*name).to_string()
                };
                elements += 1;
                if elements > limits.max_elements {
                    return Err(CodecError::TooManyElements(limits.max_elements));
                }
                if stack.len() >= limits.max_depth {
                    return Err(CodecError::TooDeep(limits.max_depth));
                }
                let el = El {
                    name,
                    ..El::default()
                };
                if t & HAS_CONTENT != 0 {
                    stack.push(el);
                } else {
                    close(&mut stack, &mut root, el)?;
                }
            }
            other => return Err(malformed(format!("unsupported token {other:#04x}"))),
        }
    }
    if !stack.is_empty() {
        return Err(malformed("unclosed elements at end of message"));
    }
    root.ok_or_else(|| malformed("empty document"))
}

fn close(stack: &mut [El], root: &mut Option<El>, el: El) -> Result<(), CodecError> {
    match stack.last_mut() {
        Some(parent) => parent.children.push(el),
        None if root.is_none() => *root = Some(el),
        None => return Err(malformed("content after the root element")),
    }
    Ok(())
}

fn text(stack: &mut [El], s: &str) -> Result<(), CodecError> {
    match stack.last_mut() {
        Some(cur) => {
            cur.text.push_str(s);
            Ok(())
        }
        None => Err(malformed("text outside the root element")),
    }
}

/// `OPAQUE` data: the raw bytes of an item whose format is `bin` become base64 (format
/// `b64`, as the model carries binary data); anything else is text.
fn opaque(stack: &mut [El], raw: &[u8]) -> Result<(), CodecError> {
    let n = stack.len();
    let binary_item = n >= 2
        && stack[n - 1].name == "Data"
        && stack[n - 2].name == "Item"
        && format_of(&stack[n - 2]).is_some_and(|f| f == "bin");
    if binary_item {
        if let Some(format) = stack[n - 2]
            .children
            .iter_mut()
            .filter(|c| c.name == "Meta")
            .flat_map(|m| m.children.iter_mut())
            .find(|c| c.name == "Format")
        {
            format.text = "b64".into();
        }
        let encoded = STANDARD.encode(raw);
        return text(stack, &encoded);
    }
    text(stack, &String::from_utf8_lossy(raw))
}

fn format_of(item: &El) -> Option<&str> {
    let meta = item.child("Meta")?;
    let meta = meta.child("MetInf").unwrap_or(meta);
    meta.child("Format").map(|f| f.text.trim())
}

/// Encodes a message as WBXML 1.2.
pub fn encode(m: &Message) -> Vec<u8> {
    let xml = codec::encode(m);
    // Our own canonical XML always parses; the limits are only what the encoder wrote.
    let limits = Limits {
        max_bytes: usize::MAX,
        max_depth: usize::MAX,
        max_elements: usize::MAX,
    };
    let mut out = vec![0x02];
    put_mb(&mut out, PUBLIC_ID_SYNCML_12);
    put_mb(&mut out, CHARSET_UTF8);
    put_mb(&mut out, 0); // no string table
    match codec::xml_tree(xml.as_bytes(), &limits) {
        Ok(root) => {
            let mut page = 0u8;
            write(&mut out, &root, false, &mut page);
        }
        Err(e) => {
            // Unreachable for messages our encoder wrote; an empty document says so loudly.
            tracing::error!(error = %e, "our XML did not parse for WBXML");
        }
    }
    out
}

fn put_mb(out: &mut Vec<u8>, mut v: u32) {
    let mut tmp = [0u8; 5];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            break;
        }
    }
    for (k, b) in tmp[i..].iter().enumerate() {
        let more = k + 1 < tmp.len() - i;
        out.push(if more { b | 0x80 } else { *b });
    }
}

/// Writes `el`: the code page follows from where it stands (MetInf inside `Meta`).
fn write(out: &mut Vec<u8>, el: &El, in_meta: bool, page: &mut u8) {
    let (want, names): (u8, &[&str]) = if in_meta { (1, &METINF) } else { (0, &SYNCML) };
    let Some(index) = names.iter().position(|n| *n == el.name) else {
        // Not a SyncML or MetInf element (unreachable from our encoder): left out.
        return;
    };
    if *page != want {
        out.extend([SWITCH_PAGE, want]);
        *page = want;
    }
    let token = (index + 5) as u8;
    let text = el.text.trim();
    if el.children.is_empty() && text.is_empty() {
        out.push(token);
        return;
    }
    out.push(token | HAS_CONTENT);
    // Base64 items travel as their bytes; data that is not canonical base64 stays text.
    let binary = el.name == "Item"
        && format_of(el) == Some("b64")
        && el
            .child("Data")
            .is_some_and(|d| STANDARD.decode(d.text.trim()).is_ok());
    for c in &el.children {
        if binary && c.name == "Meta" {
            write_meta_as_bin(out, c, page);
        } else if binary && c.name == "Data" {
            match STANDARD.decode(c.text.trim()) {
                Ok(raw) => {
                    if *page != 0 {
                        out.extend([SWITCH_PAGE, 0]);
                        *page = 0;
                    }
                    out.push(token_of("Data") | HAS_CONTENT);
                    out.push(OPAQUE);
                    put_mb(out, u32::try_from(raw.len()).unwrap_or(u32::MAX));
                    out.extend_from_slice(&raw);
                    out.push(END);
                }
                Err(_) => write(out, c, false, page),
            }
        } else {
            write(out, c, el.name == "Meta", page);
        }
    }
    if !text.is_empty() {
        out.push(STR_I);
        out.extend_from_slice(text.as_bytes());
        out.push(0);
    }
    out.push(END);
}

/// An item's Meta with `Format` `bin` instead of `b64` (its Data goes as raw bytes).
fn write_meta_as_bin(out: &mut Vec<u8>, meta: &El, page: &mut u8) {
    let rewritten = El {
        name: meta.name.clone(),
        text: meta.text.clone(),
        children: meta
            .children
            .iter()
            .map(|c| El {
                name: c.name.clone(),
                text: if c.name == "Format" {
                    "bin".into()
                } else {
                    c.text.clone()
                },
                children: Vec::new(),
            })
            .collect(),
    };
    write(out, &rewritten, false, page);
}

fn token_of(name: &str) -> u8 {
    SYNCML
        .iter()
        .position(|n| *n == name)
        .map_or(0, |i| (i + 5) as u8)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::syncml::message::*;

    fn sample() -> Message {
        Message {
            header: Header {
                session_id: "1A".into(),
                msg_id: 3,
                target: Location::uri("https://dms/dm"),
                source: Location::uri("IMEI:1"),
                meta: Meta {
                    max_msg_size: Some(16384),
                    ..Meta::default()
                },
                ..Header::default()
            },
            commands: vec![Command::Replace(ItemCommand {
                cmd_id: 2,
                items: vec![Item {
                    target: Some(Location::uri("./SCOMO/Inventory/Delivered/x/Data")),
                    meta: Meta {
                        format: Some("b64".into()),
                        size: Some(3),
                        ..Meta::default()
                    },
                    data: Some(STANDARD.encode([0u8, 0xff, 7])),
                    more_data: true,
                    ..Item::default()
                }],
                ..ItemCommand::default()
            })],
            final_: true,
        }
    }

    #[test]
    fn round_trip_with_binary_data_as_opaque() {
        let m = sample();
        let w = encode(&m);
        assert_eq!(
            &w[..4],
            &[0x02, 0xA4, 0x01, 0x6A],
            "WBXML 1.2, SyncML 1.2, UTF-8"
        );
        // The three raw bytes travel as OPAQUE, not as four characters of base64.
        assert!(w.windows(5).any(|x| x == [OPAQUE, 3, 0, 0xff, 7]));
        assert_eq!(decode(&w, &Limits::default()).unwrap(), m);
        assert!(w.len() < codec::encode(&m).len() / 2);
    }

    #[test]
    fn multibyte_integers() {
        for v in [0u32, 1, 127, 128, 0x1201, 16383, 16384, u32::MAX] {
            let mut out = Vec::new();
            put_mb(&mut out, v);
            let mut r = Reader { bytes: &out, at: 0 };
            assert_eq!(r.mb_u_int32().unwrap(), v);
            assert_eq!(r.at, out.len());
        }
        let mut r = Reader {
            bytes: &[0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            at: 0,
        };
        assert!(r.mb_u_int32().is_err());
    }

    #[test]
    fn malformed_input_is_an_error() {
        let w = encode(&sample());
        for n in 0..w.len() {
            assert!(decode(&w[..n], &Limits::default()).is_err(), "cut at {n}");
        }
        let tight = Limits {
            max_depth: 3,
            ..Limits::default()
        };
        assert_eq!(decode(&w, &tight), Err(CodecError::TooDeep(3)));
        let small = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        assert!(matches!(
            decode(&w, &small),
            Err(CodecError::TooLarge { .. })
        ));
        // Attributes, unknown pages and stray ENDs.
        for bad in [
            vec![0x03, 0x01, 0x6a, 0x00, 0xED, 0x01],
            vec![0x03, 0x01, 0x6a, 0x00, 0x00, 0x09, 0x6D, 0x01],
            vec![0x03, 0x01, 0x6a, 0x00, 0x01],
            vec![0x03, 0x01, 0x6a, 0x05, b'a', b'b'],
        ] {
            assert!(decode(&bad, &Limits::default()).is_err(), "{bad:x?}");
        }
    }

    #[test]
    fn string_table_public_id_and_references() {
        // Version 1.3, public id in the string table at 0, UTF-8, a 36-byte table.
        let fpi = b"-//SYNCML//DTD SyncML 1.2//EN\0IMEI:9\0";
        let mut w = vec![0x03, 0x00, 0x00, 0x6a];
        put_mb(&mut w, fpi.len() as u32);
        w.extend_from_slice(fpi);
        // <SyncML><SyncHdr><VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto>
        w.extend([0x6D, 0x6C, 0x71, STR_I]);
        w.extend(b"1.2\0");
        w.extend([END, 0x72, STR_I]);
        w.extend(b"DM/1.2\0");
        w.extend([END, 0x65, STR_I, b'1', 0, END, 0x5B, STR_I, b'1', 0, END]);
        // <Target><LocURI>x</LocURI></Target><Source><LocURI>(table 30)</LocURI></Source>
        w.extend([0x6E, 0x57, STR_I, b'x', 0, END, END]);
        w.extend([0x67, 0x57, STR_T, 30, END, END]);
        // </SyncHdr><SyncBody><Final/></SyncBody></SyncML>
        w.extend([END, 0x6B, 0x12, END, END]);
        let m = decode(&w, &Limits::default()).unwrap();
        assert_eq!(m.header.source.uri, "IMEI:9");
        assert!(m.final_);
    }
}
