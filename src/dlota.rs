//! OMA Download OTA 1.0 (DLOTA), the second alternate download mechanism: the download
//! descriptor (`application/vnd.oma.dd+xml`) a descriptor-driven client fetches before the
//! object, and the status report it POSTs to the descriptor's `installNotifyURI` afterwards
//! (`900 Success`, `905 Attribute mismatch`, ...). Pure: the ADS builds descriptors and parses
//! reports with it, the device agent the other way round, and the DMS maps report codes to
//! SCOMO result codes (`OMA-DM-NOTES.md` §7).
//!
//! The descriptor is DD 1.0: root `media` in the OMA namespace; `objectURI`, `size` and `type`
//! mandatory; `DDVersion`, `name`, `vendor`, `description`, `installNotifyURI`, `nextURL`
//! optional. Our digests travel as vendor extensions in a namespace of their own (DD 1.0
//! clients skip elements of namespaces they do not know).

use std::fmt::Write as _;

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

use crate::scomo::ResultCode;

/// The descriptor's media type.
pub const CONTENT_TYPE: &str = "application/vnd.oma.dd+xml";
/// The DD 1.0 namespace of `media` and its elements.
pub const NAMESPACE: &str = "http://www.openmobilealliance.org/xmlns/dd";
/// Our vendor extensions (the object's digests).
pub const EXT_NAMESPACE: &str = "urn:scomo-ads:dd-ext:1";
/// The `DDVersion` we write; a client accepts any 1.x.
pub const DD_VERSION: &str = "1.0";
/// Largest descriptor a client reads (ours are well under 2 KiB).
pub const MAX_DESCRIPTOR_BYTES: usize = 16 * 1024;
/// Largest install-notify report the ADS reads (the spec's body is one short line).
pub const MAX_REPORT_BYTES: usize = 1024;
/// Longest report text kept (the rest is cut).
const MAX_MESSAGE_CHARS: usize = 200;

/// The install-notify status codes of DLOTA 1.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallStatus {
    Success = 900,
    InsufficientMemory = 901,
    UserCancelled = 902,
    LossOfService = 903,
    AttributeMismatch = 905,
    InvalidDescriptor = 906,
    InvalidDdVersion = 951,
    DeviceAborted = 952,
    NonAcceptableContent = 953,
    LoaderError = 954,
}

impl InstallStatus {
    pub const ALL: [InstallStatus; 10] = [
        InstallStatus::Success,
        InstallStatus::InsufficientMemory,
        InstallStatus::UserCancelled,
        InstallStatus::LossOfService,
        InstallStatus::AttributeMismatch,
        InstallStatus::InvalidDescriptor,
        InstallStatus::InvalidDdVersion,
        InstallStatus::DeviceAborted,
        InstallStatus::NonAcceptableContent,
        InstallStatus::LoaderError,
    ];

    pub fn code(self) -> u16 {
        self as u16
    }

    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The status text the spec pairs with the code.
    pub fn text(self) -> &'static str {
        match self {
            InstallStatus::Success => "Success",
            InstallStatus::InsufficientMemory => "Insufficient memory",
            InstallStatus::UserCancelled => "User Cancelled",
            InstallStatus::LossOfService => "Loss of Service",
            InstallStatus::AttributeMismatch => "Attribute mismatch",
            InstallStatus::InvalidDescriptor => "Invalid descriptor",
            InstallStatus::InvalidDdVersion => "Invalid DDVersion",
            InstallStatus::DeviceAborted => "Device Aborted",
            InstallStatus::NonAcceptableContent => "Non-Acceptable Content",
            InstallStatus::LoaderError => "Loader Error",
        }
    }
}

/// The SCOMO result code (OMA-TS-DM-SCOMO §8.7) an install-notify status means for the
/// operation that asked for the download; `None` for 900 (the device claims success, which
/// its own SCOMO report and the node's completion confirm or not). A 9xx code DLOTA does not
/// define is a failed download.
pub fn scomo_result(status: u16) -> Option<ResultCode> {
    Some(match InstallStatus::from_code(status) {
        Some(InstallStatus::Success) => return None,
        Some(InstallStatus::InsufficientMemory) => ResultCode::DownloadFailedOutOfMemory,
        Some(InstallStatus::UserCancelled) => ResultCode::UserCancelled,
        Some(InstallStatus::LossOfService) => ResultCode::DownloadFailed,
        Some(
            InstallStatus::AttributeMismatch
            | InstallStatus::InvalidDescriptor
            | InstallStatus::InvalidDdVersion
            | InstallStatus::NonAcceptableContent,
        ) => ResultCode::FailedPackageValidation,
        Some(InstallStatus::DeviceAborted | InstallStatus::LoaderError) | None => {
            ResultCode::DownloadFailed
        }
    })
}

/// An install-notify report: the status code and its text, as the device wrote them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub status: u16,
    pub message: String,
}

/// Why an install-notify body is not a report.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("the report is longer than {MAX_REPORT_BYTES} bytes")]
    TooLarge,
    #[error("the report is not UTF-8 text")]
    NotText,
    #[error("the report must start with a 9xx status code, as in \"900 Success\"")]
    NoStatus,
}

impl Report {
    pub fn new(status: InstallStatus) -> Self {
        Report {
            status: status.code(),
            message: status.text().to_string(),
        }
    }

    /// The body a device POSTs.
    pub fn to_body(&self) -> String {
        format!("{} {}\r\n", self.status, self.message)
    }

    /// Reads an install-notify body: a 9xx code, then optional text (`900 Success`). Leading
    /// and trailing white space, a text of any case, and no text at all are accepted; control
    /// characters are dropped and the text is cut to 200 characters.
    pub fn parse(body: &[u8]) -> Result<Report, ReportError> {
        if body.len() > MAX_REPORT_BYTES {
            return Err(ReportError::TooLarge);
        }
        let text = std::str::from_utf8(body).map_err(|_| ReportError::NotText)?;
        let text = text.trim();
        let digits = text.get(..3).ok_or(ReportError::NoStatus)?;
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ReportError::NoStatus);
        }
        let rest = &text[3..];
        if rest.chars().next().is_some_and(|c| !c.is_whitespace()) {
            return Err(ReportError::NoStatus);
        }
        let status: u16 = digits.parse().map_err(|_| ReportError::NoStatus)?;
        if !(900..=999).contains(&status) {
            return Err(ReportError::NoStatus);
        }
        let message = rest
            .trim()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_MESSAGE_CHARS)
            .collect();
        Ok(Report { status, message })
    }

    /// Whether the device claims success.
    pub fn is_success(&self) -> bool {
        self.status == InstallStatus::Success.code()
    }
}

/// A DD 1.0 download descriptor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    pub dd_version: Option<String>,
    pub name: Option<String>,
    pub object_uri: String,
    pub size: u64,
    /// The object's media types (DD 1.0 allows several; the first is the object's own).
    pub types: Vec<String>,
    pub vendor: Option<String>,
    pub description: Option<String>,
    pub install_notify_uri: Option<String>,
    pub next_url: Option<String>,
    /// Vendor extension: the object's BLAKE3, hex.
    pub blake3: Option<String>,
    /// Vendor extension: the object's SHA-256, hex.
    pub sha256: Option<String>,
}

/// Why a descriptor was refused; each maps to the status the device reports.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    #[error("the descriptor is larger than {MAX_DESCRIPTOR_BYTES} bytes")]
    TooLarge,
    #[error("the descriptor is not well-formed XML: {0}")]
    Xml(String),
    #[error("the root element is not DD 1.0's media (namespace {NAMESPACE})")]
    NotADescriptor,
    #[error("the descriptor lacks its mandatory {0}")]
    Missing(&'static str),
    #[error("the descriptor's size is not a byte count")]
    BadSize,
    #[error("DDVersion {0} is not 1.x")]
    UnsupportedVersion(String),
}

impl DescriptorError {
    /// The install-notify status a device reports for this descriptor.
    pub fn status(&self) -> InstallStatus {
        match self {
            DescriptorError::UnsupportedVersion(_) => InstallStatus::InvalidDdVersion,
            _ => InstallStatus::InvalidDescriptor,
        }
    }
}

fn text_element(out: &mut String, name: &str, value: &str) {
    let _ = writeln!(
        out,
        "  <{name}>{}</{name}>",
        quick_xml::escape::escape(value)
    );
}

impl Descriptor {
    /// The descriptor as DD 1.0 XML (UTF-8, with its declaration).
    pub fn to_xml(&self) -> String {
        let mut out = String::with_capacity(1024);
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            out,
            "<media xmlns=\"{NAMESPACE}\" xmlns:ext=\"{EXT_NAMESPACE}\">"
        );
        if let Some(v) = &self.dd_version {
            text_element(&mut out, "DDVersion", v);
        }
        if let Some(v) = &self.name {
            text_element(&mut out, "name", v);
        }
        text_element(&mut out, "objectURI", &self.object_uri);
        text_element(&mut out, "size", &self.size.to_string());
        for t in &self.types {
            text_element(&mut out, "type", t);
        }
        for (name, v) in [
            ("vendor", &self.vendor),
            ("description", &self.description),
            ("installNotifyURI", &self.install_notify_uri),
            ("nextURL", &self.next_url),
            ("ext:blake3", &self.blake3),
            ("ext:sha256", &self.sha256),
        ] {
            if let Some(v) = v {
                text_element(&mut out, name, v);
            }
        }
        out.push_str("</media>\n");
        out
    }

    /// Reads a descriptor, checking DD 1.0's rules: root `media` in the DD namespace,
    /// `objectURI`, `size` and `type` present, `DDVersion` (when given) 1.x. Elements of other
    /// namespaces are skipped, but for our digests.
    pub fn parse(xml: &[u8]) -> Result<Descriptor, DescriptorError> {
        if xml.len() > MAX_DESCRIPTOR_BYTES {
            return Err(DescriptorError::TooLarge);
        }
        let text =
            std::str::from_utf8(xml).map_err(|_| DescriptorError::Xml("not UTF-8".into()))?;
        let mut reader = NsReader::from_str(text);
        reader.config_mut().trim_text(true);
        let mut d = Descriptor::default();
        let mut size: Option<&'static str> = Some("size");
        let mut depth = 0usize;
        // The child of `media` whose text is being read: (namespace is ours?, local name).
        let mut field: Option<(Ns, String)> = None;
        loop {
            let (ns, event) = reader
                .read_resolved_event()
                .map_err(|e| DescriptorError::Xml(e.to_string()))?;
            match event {
                Event::Start(e) => {
                    depth += 1;
                    let ns = classify(&ns);
                    let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                    if depth == 1 {
                        if ns != Ns::Dd || local != "media" {
                            return Err(DescriptorError::NotADescriptor);
                        }
                    } else if depth == 2 {
                        field = Some((ns, local));
                    } else if depth > 8 {
                        return Err(DescriptorError::Xml("nested too deep".into()));
                    }
                }
                Event::Empty(e) => {
                    let ns = classify(&ns);
                    if depth == 0 {
                        let local = e.local_name();
                        if ns == Ns::Dd && local.as_ref() == b"media" {
                            return Err(DescriptorError::Missing("objectURI"));
                        }
                        return Err(DescriptorError::NotADescriptor);
                    }
                }
                Event::End(_) => {
                    depth = depth.saturating_sub(1);
                    if depth <= 1 {
                        field = None;
                    }
                    if depth == 0 {
                        break;
                    }
                }
                Event::Text(t) if depth == 2 => {
                    let value = t
                        .unescape()
                        .map_err(|e| DescriptorError::Xml(e.to_string()))?
                        .trim()
                        .to_string();
                    if let Some((ns, name)) = &field {
                        d.set(*ns, name, value, &mut size)?;
                    }
                }
                Event::CData(c) if depth == 2 => {
                    let value = String::from_utf8_lossy(&c).trim().to_string();
                    if let Some((ns, name)) = &field {
                        d.set(*ns, name, value, &mut size)?;
                    }
                }
                Event::DocType(_) => {
                    return Err(DescriptorError::Xml("a DOCTYPE is not allowed".into()))
                }
                Event::Eof => {
                    if depth == 0 {
                        return Err(DescriptorError::NotADescriptor);
                    }
                    return Err(DescriptorError::Xml("unexpected end".into()));
                }
                _ => {}
            }
        }
        if d.object_uri.is_empty() {
            return Err(DescriptorError::Missing("objectURI"));
        }
        if let Some(missing) = size {
            return Err(DescriptorError::Missing(missing));
        }
        if d.types.is_empty() {
            return Err(DescriptorError::Missing("type"));
        }
        if let Some(v) = &d.dd_version {
            if !(v == "1" || v.starts_with("1.")) {
                return Err(DescriptorError::UnsupportedVersion(v.clone()));
            }
        }
        Ok(d)
    }

    fn set(
        &mut self,
        ns: Ns,
        name: &str,
        value: String,
        size_missing: &mut Option<&'static str>,
    ) -> Result<(), DescriptorError> {
        match (ns, name) {
            (Ns::Dd, "DDVersion") => self.dd_version = Some(value),
            (Ns::Dd, "name") => self.name = Some(value),
            (Ns::Dd, "objectURI") => self.object_uri = value,
            (Ns::Dd, "size") => {
                self.size = value.parse().map_err(|_| DescriptorError::BadSize)?;
                *size_missing = None;
            }
            (Ns::Dd, "type") => self.types.push(value),
            (Ns::Dd, "vendor") => self.vendor = Some(value),
            (Ns::Dd, "description") => self.description = Some(value),
            (Ns::Dd, "installNotifyURI") => self.install_notify_uri = Some(value),
            (Ns::Dd, "nextURL") => self.next_url = Some(value),
            (Ns::Ext, "blake3") => self.blake3 = Some(value),
            (Ns::Ext, "sha256") => self.sha256 = Some(value),
            // DD 1.0 elements we do not use (infoURL, iconURI, installParam) and foreign
            // namespaces' elements.
            _ => {}
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ns {
    Dd,
    Ext,
    Other,
}

fn classify(ns: &ResolveResult<'_>) -> Ns {
    match ns {
        ResolveResult::Bound(n) if n.as_ref() == NAMESPACE.as_bytes() => Ns::Dd,
        ResolveResult::Bound(n) if n.as_ref() == EXT_NAMESPACE.as_bytes() => Ns::Ext,
        _ => Ns::Other,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn sample() -> Descriptor {
        Descriptor {
            dd_version: Some(DD_VERSION.into()),
            name: Some("modem-fw <2.1>".into()),
            object_uri: "https://ads.example/d/AbC".into(),
            size: 1234,
            types: vec!["application/octet-stream".into()],
            vendor: Some("scomo-ads".into()),
            description: Some("modem-fw 2.1 & co".into()),
            install_notify_uri: Some("https://ads.example/dn/AbC".into()),
            next_url: None,
            blake3: Some("ab".repeat(32)),
            sha256: Some("cd".repeat(32)),
        }
    }

    #[test]
    fn a_descriptor_round_trips() {
        let d = sample();
        let xml = d.to_xml();
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<media xmlns=\""));
        assert!(xml.contains("&lt;2.1&gt;"), "{xml}");
        assert_eq!(Descriptor::parse(xml.as_bytes()).unwrap(), d);
    }

    #[test]
    fn dd_rules_are_enforced() {
        let ok = sample().to_xml();
        // Mandatory elements.
        for (element, missing) in [
            ("objectURI", "objectURI"),
            ("size", "size"),
            ("type", "type"),
        ] {
            let start = ok.find(&format!("  <{element}>")).unwrap();
            let end = ok[start..].find('\n').unwrap() + start + 1;
            let cut = format!("{}{}", &ok[..start], &ok[end..]);
            assert_eq!(
                Descriptor::parse(cut.as_bytes()),
                Err(DescriptorError::Missing(missing)),
                "{element}"
            );
        }
        // The root must be `media` in the DD namespace.
        let wrong_ns = ok.replace(NAMESPACE, "http://example.com/not-dd");
        assert_eq!(
            Descriptor::parse(wrong_ns.as_bytes()),
            Err(DescriptorError::NotADescriptor)
        );
        assert_eq!(
            Descriptor::parse(b"<html><body/></html>"),
            Err(DescriptorError::NotADescriptor)
        );
        let v2 = ok.replace("<DDVersion>1.0<", "<DDVersion>2.0<");
        let e = Descriptor::parse(v2.as_bytes()).unwrap_err();
        assert_eq!(e.status(), InstallStatus::InvalidDdVersion);
        let bad_size = ok.replace("<size>1234<", "<size>12kB<");
        assert_eq!(
            Descriptor::parse(bad_size.as_bytes()),
            Err(DescriptorError::BadSize)
        );
        assert_eq!(
            Descriptor::parse(b"\x00\x01binary").unwrap_err().status(),
            InstallStatus::InvalidDescriptor
        );
        let huge = vec![b' '; MAX_DESCRIPTOR_BYTES + 1];
        assert_eq!(Descriptor::parse(&huge), Err(DescriptorError::TooLarge));
        let doctype = format!(
            "<?xml version=\"1.0\"?><!DOCTYPE media [<!ENTITY x \"y\">]>{}",
            ok.split_once("?>\n").unwrap().1
        );
        assert!(matches!(
            Descriptor::parse(doctype.as_bytes()),
            Err(DescriptorError::Xml(_))
        ));
    }

    #[test]
    fn foreign_elements_and_a_prefixed_dd_namespace_are_read() {
        let xml = format!(
            "<dd:media xmlns:dd=\"{NAMESPACE}\" xmlns:x=\"urn:other\">
               <dd:objectURI> https://a/d/t </dd:objectURI><x:size>9</x:size>
               <dd:size>5</dd:size><dd:type>text/plain</dd:type><dd:type>application/x</dd:type>
               <dd:installParam>p</dd:installParam></dd:media>"
        );
        let d = Descriptor::parse(xml.as_bytes()).unwrap();
        assert_eq!(d.object_uri, "https://a/d/t");
        assert_eq!(d.size, 5);
        assert_eq!(d.types, ["text/plain", "application/x"]);
        assert_eq!(d.dd_version, None);
    }

    #[test]
    fn reports_parse_as_the_spec_writes_them() {
        assert_eq!(
            Report::parse(b"900 Success").unwrap(),
            Report {
                status: 900,
                message: "Success".into()
            }
        );
        assert_eq!(
            Report::parse(b"  905 Attribute mismatch\r\n")
                .unwrap()
                .status,
            905
        );
        assert_eq!(Report::parse(b"902").unwrap().message, "");
        assert_eq!(Report::parse(b"9021 x"), Err(ReportError::NoStatus));
        assert_eq!(Report::parse(b"200 OK"), Err(ReportError::NoStatus));
        assert_eq!(Report::parse(b"Success"), Err(ReportError::NoStatus));
        assert_eq!(Report::parse(b""), Err(ReportError::NoStatus));
        assert_eq!(Report::parse(&[0xff, 0xfe]), Err(ReportError::NotText));
        assert_eq!(
            Report::parse(&vec![b'9'; MAX_REPORT_BYTES + 1]),
            Err(ReportError::TooLarge)
        );
        let long = format!("954 {}\u{7}", "x".repeat(500));
        assert_eq!(Report::parse(long.as_bytes()).unwrap().message.len(), 200);
        let r = Report::new(InstallStatus::UserCancelled);
        assert_eq!(Report::parse(r.to_body().as_bytes()).unwrap(), r);
    }

    #[test]
    fn report_codes_map_to_scomo_results() {
        use ResultCode::*;
        let expect = [
            (900, None),
            (901, Some(DownloadFailedOutOfMemory)),
            (902, Some(UserCancelled)),
            (903, Some(DownloadFailed)),
            (905, Some(FailedPackageValidation)),
            (906, Some(FailedPackageValidation)),
            (951, Some(FailedPackageValidation)),
            (952, Some(DownloadFailed)),
            (953, Some(FailedPackageValidation)),
            (954, Some(DownloadFailed)),
            (977, Some(DownloadFailed)),
        ];
        for (code, result) in expect {
            assert_eq!(scomo_result(code), result, "{code}");
        }
        assert_eq!(ResultCode::UserCancelled.code(), 1401);
        assert_eq!(ResultCode::DownloadFailedOutOfMemory.code(), 1404);
        for s in InstallStatus::ALL {
            assert_eq!(InstallStatus::from_code(s.code()), Some(s));
        }
    }
}
