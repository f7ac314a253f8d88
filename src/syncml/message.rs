//! The typed model of a SyncML DM 1.2 message (OMA-DM-NOTES.md §1): header, body commands,
//! items, meta. Pure data; [`super::codec`] turns it into XML and back.

/// A whole message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub commands: Vec<Command>,
    /// `<Final/>`: the last message of a package.
    pub final_: bool,
}

/// `SyncHdr`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub ver_dtd: String,
    pub ver_proto: String,
    pub session_id: String,
    pub msg_id: u32,
    pub target: Location,
    pub source: Location,
    pub resp_uri: Option<String>,
    pub no_resp: bool,
    pub cred: Option<Cred>,
    pub meta: Meta,
}

impl Default for Header {
    fn default() -> Self {
        Self {
            ver_dtd: "1.2".into(),
            ver_proto: "DM/1.2".into(),
            session_id: String::new(),
            msg_id: 1,
            target: Location::default(),
            source: Location::default(),
            resp_uri: None,
            no_resp: false,
            cred: None,
            meta: Meta::default(),
        }
    }
}

/// `Target` / `Source`: a `LocURI` with an optional `LocName`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Location {
    pub uri: String,
    pub name: Option<String>,
}

impl Location {
    pub fn uri(uri: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            name: None,
        }
    }
}

/// `Meta` (the `syncml:metinf` elements we use). Empty when nothing is set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub format: Option<String>,
    pub type_: Option<String>,
    pub mark: Option<String>,
    pub size: Option<u64>,
    pub next_nonce: Option<String>,
    pub max_msg_size: Option<u64>,
    pub max_obj_size: Option<u64>,
}

impl Meta {
    pub fn is_empty(&self) -> bool {
        *self == Meta::default()
    }

    /// Meta with a Format.
    pub fn format(f: &str) -> Self {
        Meta {
            format: Some(f.into()),
            ..Meta::default()
        }
    }
}

/// `Cred` (only in `SyncHdr`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cred {
    pub meta: Meta,
    pub data: String,
}

/// `Item`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Item {
    pub target: Option<Location>,
    pub source: Option<Location>,
    pub meta: Meta,
    /// The `Data` text (b64 for binary formats). Child XML inside `Data` is kept as text.
    pub data: Option<String>,
    /// `<MoreData/>`: a large-object chunk that continues in the next message.
    pub more_data: bool,
}

impl Item {
    /// An item naming a target node.
    pub fn target(uri: impl Into<String>) -> Self {
        Item {
            target: Some(Location::uri(uri)),
            ..Item::default()
        }
    }

    /// An item naming a source node.
    pub fn source(uri: impl Into<String>) -> Self {
        Item {
            source: Some(Location::uri(uri)),
            ..Item::default()
        }
    }

    pub fn with_data(mut self, data: impl Into<String>) -> Self {
        self.data = Some(data.into());
        self
    }

    pub fn with_meta(mut self, meta: Meta) -> Self {
        self.meta = meta;
        self
    }
}

/// Add, Replace, Delete, Copy, Get: a command id, optional meta and items.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ItemCommand {
    pub cmd_id: u32,
    pub no_resp: bool,
    pub meta: Meta,
    pub items: Vec<Item>,
}

/// `Alert`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Alert {
    pub cmd_id: u32,
    pub no_resp: bool,
    pub correlator: Option<String>,
    pub code: u16,
    pub items: Vec<Item>,
}

/// `Exec`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exec {
    pub cmd_id: u32,
    pub no_resp: bool,
    pub correlator: Option<String>,
    pub meta: Meta,
    pub items: Vec<Item>,
}

/// `Sequence` and `Atomic`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Container {
    pub cmd_id: u32,
    pub no_resp: bool,
    pub meta: Meta,
    pub commands: Vec<Command>,
}

/// `Status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub cmd_id: u32,
    pub msg_ref: u32,
    pub cmd_ref: u32,
    /// Name of the command answered (`SyncHdr` for the header).
    pub cmd: String,
    pub target_refs: Vec<String>,
    pub source_refs: Vec<String>,
    /// `Chal/Meta`: the authentication challenge (type, format, next nonce).
    pub chal: Option<Meta>,
    pub code: u16,
    pub items: Vec<Item>,
}

/// `Results`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Results {
    pub cmd_id: u32,
    pub msg_ref: Option<u32>,
    pub cmd_ref: u32,
    pub meta: Meta,
    pub target_refs: Vec<String>,
    pub source_refs: Vec<String>,
    pub items: Vec<Item>,
}

/// A body command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Alert(Alert),
    Add(ItemCommand),
    Replace(ItemCommand),
    Delete(ItemCommand),
    Copy(ItemCommand),
    Get(ItemCommand),
    Exec(Exec),
    Sequence(Container),
    Atomic(Container),
    Status(Status),
    Results(Results),
}

impl Command {
    /// The element name, as `Status/Cmd` names it.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Alert(_) => "Alert",
            Command::Add(_) => "Add",
            Command::Replace(_) => "Replace",
            Command::Delete(_) => "Delete",
            Command::Copy(_) => "Copy",
            Command::Get(_) => "Get",
            Command::Exec(_) => "Exec",
            Command::Sequence(_) => "Sequence",
            Command::Atomic(_) => "Atomic",
            Command::Status(_) => "Status",
            Command::Results(_) => "Results",
        }
    }

    pub fn cmd_id(&self) -> u32 {
        match self {
            Command::Alert(c) => c.cmd_id,
            Command::Add(c)
            | Command::Replace(c)
            | Command::Delete(c)
            | Command::Copy(c)
            | Command::Get(c) => c.cmd_id,
            Command::Exec(c) => c.cmd_id,
            Command::Sequence(c) | Command::Atomic(c) => c.cmd_id,
            Command::Status(c) => c.cmd_id,
            Command::Results(c) => c.cmd_id,
        }
    }

    /// Renumbers the command (messages number their commands in order).
    pub fn set_cmd_id(&mut self, id: u32) {
        match self {
            Command::Alert(c) => c.cmd_id = id,
            Command::Add(c)
            | Command::Replace(c)
            | Command::Delete(c)
            | Command::Copy(c)
            | Command::Get(c) => c.cmd_id = id,
            Command::Exec(c) => c.cmd_id = id,
            Command::Sequence(c) | Command::Atomic(c) => c.cmd_id = id,
            Command::Status(c) => c.cmd_id = id,
            Command::Results(c) => c.cmd_id = id,
        }
    }

    /// The items a command carries (none for containers).
    pub fn items(&self) -> &[Item] {
        match self {
            Command::Alert(c) => &c.items,
            Command::Add(c)
            | Command::Replace(c)
            | Command::Delete(c)
            | Command::Copy(c)
            | Command::Get(c) => &c.items,
            Command::Exec(c) => &c.items,
            Command::Status(c) => &c.items,
            Command::Results(c) => &c.items,
            Command::Sequence(_) | Command::Atomic(_) => &[],
        }
    }

    /// Whether the receiver must answer with a Status.
    pub fn needs_status(&self) -> bool {
        match self {
            Command::Status(_) | Command::Results(_) => false,
            Command::Alert(c) => !c.no_resp,
            Command::Add(c)
            | Command::Replace(c)
            | Command::Delete(c)
            | Command::Copy(c)
            | Command::Get(c) => !c.no_resp,
            Command::Exec(c) => !c.no_resp,
            Command::Sequence(c) | Command::Atomic(c) => !c.no_resp,
        }
    }
}
