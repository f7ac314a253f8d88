//! SyncML DM 1.2: the wire vocabulary the DMS and the device agent share
//! (see `../shared/OMA-DM-NOTES.md`). Pure: no I/O, no HTTP, no clock.
//!
//! - [`message`]: the typed model of a message and its commands.
//! - [`codec`]: XML decode (bounded, entity-free) and canonical encode.
//! - [`wbxml`]: the same messages in WBXML (what most shipped clients send).
//! - [`codes`]: status and alert codes with the spec's numbers.
//! - [`auth`]: basic and MD5 digest credentials, nonces.
//! - [`pkg0`]: the package 0 notification.
//! - [`large_object`]: splitting an object over messages and bounded reassembly.
//! - [`tree`]: a small DM tree with DevInfo and DevDetail.

pub mod auth;
pub mod codec;
pub mod codes;
pub mod large_object;
pub mod message;
pub mod pkg0;
pub mod tree;
pub mod wbxml;

/// Content type of SyncML DM XML messages.
pub const CONTENT_TYPE: &str = "application/vnd.syncml.dm+xml";

/// The two encodings of a SyncML DM message; a session answers in the one the device used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Encoding {
    #[default]
    Xml,
    Wbxml,
}

impl Encoding {
    /// The encoding a request's `Content-Type` names (parameters ignored), if any.
    pub fn from_content_type(value: &str) -> Option<Self> {
        let base = value.split(';').next().unwrap_or("").trim();
        let is = |t: &str| base.eq_ignore_ascii_case(t);
        if is(CONTENT_TYPE) || is("application/vnd.syncml+xml") {
            Some(Encoding::Xml)
        } else if is(wbxml::CONTENT_TYPE) || is(wbxml::CONTENT_TYPE_LEGACY) {
            Some(Encoding::Wbxml)
        } else {
            None
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "xml" => Some(Encoding::Xml),
            "wbxml" => Some(Encoding::Wbxml),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Xml => CONTENT_TYPE,
            Encoding::Wbxml => wbxml::CONTENT_TYPE,
        }
    }

    pub fn encode(self, m: &message::Message) -> Vec<u8> {
        match self {
            Encoding::Xml => codec::encode(m).into_bytes(),
            Encoding::Wbxml => wbxml::encode(m),
        }
    }

    pub fn decode(
        self,
        bytes: &[u8],
        limits: &codec::Limits,
    ) -> Result<message::Message, codec::CodecError> {
        match self {
            Encoding::Xml => codec::decode(bytes, limits),
            Encoding::Wbxml => wbxml::decode(bytes, limits),
        }
    }

    pub fn decode_header(
        self,
        bytes: &[u8],
        limits: &codec::Limits,
    ) -> Result<message::Header, codec::CodecError> {
        match self {
            Encoding::Xml => codec::decode_header(bytes, limits),
            Encoding::Wbxml => wbxml::decode_header(bytes, limits),
        }
    }
}
