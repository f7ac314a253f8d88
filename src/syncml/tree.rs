//! A small DM tree (ACL-free): nodes by path with a format and an optional value, interior
//! nodes created on demand, `Get` with `?list=Struct|StructData`, and the DevInfo / DevDetail
//! subtrees (OMA-DM-NOTES.md §5). Pure and serializable, so the device agent can persist it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::codes::StatusCode;
use super::message::{Item, Meta};

/// Longest URI we accept (DevDetail/URI/MaxTotLen).
pub const MAX_TOTAL_LEN: usize = 1024;
/// Deepest path we accept (DevDetail/URI/MaxDepth).
pub const MAX_DEPTH: usize = 16;
/// Longest path segment (DevDetail/URI/MaxSegLen).
pub const MAX_SEGMENT_LEN: usize = 64;

/// A node: `format` is `node` for interior nodes, else chr, int, bool, b64, bin, xml...
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl Node {
    fn interior() -> Self {
        Node {
            format: "node".into(),
            mime: None,
            value: None,
        }
    }

    pub fn is_interior(&self) -> bool {
        self.format == "node"
    }
}

/// Tree operation failures, each with the status it answers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("no node at {0}")]
    NotFound(String),
    #[error("invalid URI {0:?}")]
    BadUri(String),
    #[error("URI too long")]
    TooLong,
    #[error("a node already exists at {0}")]
    AlreadyExists(String),
    #[error("{0} is an interior node")]
    Interior(String),
}

impl TreeError {
    pub fn status(&self) -> StatusCode {
        match self {
            TreeError::NotFound(_) => StatusCode::NotFound,
            TreeError::BadUri(_) => StatusCode::BadRequest,
            TreeError::TooLong => StatusCode::UriTooLong,
            TreeError::AlreadyExists(_) => StatusCode::AlreadyExists,
            TreeError::Interior(_) => StatusCode::CommandNotAllowed,
        }
    }
}

/// `?list=` forms of a Get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    /// Node names and formats of the subtree.
    Struct,
    /// The subtree with leaf values.
    StructData,
}

/// The tree.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

/// Normalizes `A/B`, `./A/B`, `./A/B/` to `./A/B`; refuses `..`, empty segments, overlong URIs.
pub fn normalize(uri: &str) -> Result<String, TreeError> {
    if uri.len() > MAX_TOTAL_LEN {
        return Err(TreeError::TooLong);
    }
    let trimmed = uri.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("./")
        .or_else(|| (trimmed == ".").then_some(""))
        .unwrap_or(trimmed);
    let mut out = String::from(".");
    let mut depth = 0;
    for seg in rest.split('/').filter(|_| !rest.is_empty()) {
        if seg.is_empty() || seg == "." || seg == ".." || seg.len() > MAX_SEGMENT_LEN {
            return Err(TreeError::BadUri(uri.chars().take(80).collect()));
        }
        depth += 1;
        if depth > MAX_DEPTH {
            return Err(TreeError::TooLong);
        }
        out.push('/');
        out.push_str(seg);
    }
    Ok(out)
}

/// Splits `path?list=Struct` into the path and the list kind.
pub fn split_query(uri: &str) -> Result<(String, Option<ListKind>), TreeError> {
    match uri.split_once('?') {
        None => Ok((normalize(uri)?, None)),
        Some((path, query)) => {
            let kind = match query.trim() {
                "list=Struct" => ListKind::Struct,
                "list=StructData" => ListKind::StructData,
                _ => return Err(TreeError::BadUri(uri.chars().take(80).collect())),
            };
            Ok((normalize(path)?, Some(kind)))
        }
    }
}

fn parent(path: &str) -> Option<&str> {
    path.rfind('/').map(|i| &path[..i])
}

impl Tree {
    pub fn new() -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(".".to_string(), Node::interior());
        Self { nodes }
    }

    fn ensure_parents(&mut self, path: &str) -> Result<(), TreeError> {
        let mut p = parent(path);
        while let Some(x) = p {
            match self.nodes.get(x) {
                Some(n) if !n.is_interior() => return Err(TreeError::Interior(x.into())),
                Some(_) => {}
                None => {
                    self.nodes.insert(x.to_string(), Node::interior());
                }
            }
            p = parent(x);
        }
        Ok(())
    }

    /// Sets (adding if needed) a leaf.
    pub fn set(
        &mut self,
        uri: &str,
        format: &str,
        value: impl Into<String>,
    ) -> Result<(), TreeError> {
        let path = normalize(uri)?;
        if let Some(n) = self.nodes.get(&path) {
            if n.is_interior() && format != "node" {
                return Err(TreeError::Interior(path));
            }
        }
        self.ensure_parents(&path)?;
        self.nodes.insert(
            path,
            Node {
                format: format.to_string(),
                mime: None,
                value: Some(value.into()),
            },
        );
        Ok(())
    }

    /// Adds an interior node (and its parents).
    pub fn add_interior(&mut self, uri: &str) -> Result<(), TreeError> {
        let path = normalize(uri)?;
        self.ensure_parents(&path)?;
        self.nodes.entry(path).or_insert_with(Node::interior);
        Ok(())
    }

    /// `Add` semantics: fails if the node exists.
    pub fn add(&mut self, uri: &str, format: &str, value: Option<String>) -> Result<(), TreeError> {
        let path = normalize(uri)?;
        if self.nodes.contains_key(&path) {
            return Err(TreeError::AlreadyExists(path));
        }
        if format == "node" {
            return self.add_interior(&path);
        }
        self.set(&path, format, value.unwrap_or_default())
    }

    pub fn get(&self, uri: &str) -> Option<&Node> {
        normalize(uri).ok().and_then(|p| self.nodes.get(&p))
    }

    /// A leaf's value.
    pub fn value(&self, uri: &str) -> Option<&str> {
        self.get(uri).and_then(|n| n.value.as_deref())
    }

    /// Names of the direct children of an interior node.
    pub fn children(&self, uri: &str) -> Vec<String> {
        let Ok(path) = normalize(uri) else {
            return Vec::new();
        };
        let prefix = format!("{path}/");
        self.nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| !k[prefix.len()..].contains('/'))
            .map(|(k, _)| k[prefix.len()..].to_string())
            .collect()
    }

    /// Deletes a node and its subtree.
    pub fn delete(&mut self, uri: &str) -> Result<(), TreeError> {
        let path = normalize(uri)?;
        if path == "." || self.nodes.remove(&path).is_none() {
            return Err(TreeError::NotFound(path));
        }
        let prefix = format!("{path}/");
        self.nodes.retain(|k, _| !k.starts_with(&prefix));
        Ok(())
    }

    /// Answers a Get on `uri` (which may carry `?list=`) as Results items.
    pub fn get_items(&self, uri: &str) -> Result<Vec<Item>, TreeError> {
        let (path, list) = split_query(uri)?;
        let node = self
            .nodes
            .get(&path)
            .ok_or_else(|| TreeError::NotFound(path.clone()))?;
        let item = |p: &str, n: &Node, with_value: bool| {
            let data = if n.is_interior() {
                Some(self.children(p).join("/"))
            } else if with_value {
                n.value.clone()
            } else {
                None
            };
            Item {
                source: Some(super::message::Location::uri(p)),
                meta: Meta {
                    format: Some(n.format.clone()),
                    type_: n.mime.clone(),
                    ..Meta::default()
                },
                data,
                ..Item::default()
            }
        };
        match list {
            None => Ok(vec![item(&path, node, true)]),
            Some(kind) => {
                let prefix = format!("{path}/");
                let mut out = vec![item(&path, node, kind == ListKind::StructData)];
                for (k, n) in self.nodes.range(prefix.clone()..) {
                    if !k.starts_with(&prefix) {
                        break;
                    }
                    out.push(item(k, n, kind == ListKind::StructData));
                }
                Ok(out)
            }
        }
    }
}

/// `./DevInfo`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevInfo {
    pub dev_id: String,
    pub man: String,
    pub model: String,
    pub dm_v: String,
    pub lang: String,
}

/// `./DevDetail` (the fields build selection uses).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevDetail {
    pub dev_typ: String,
    pub oem: String,
    pub fw_v: String,
    pub sw_v: String,
    pub hw_v: String,
    /// Supports large objects.
    pub lrg_obj: bool,
}

impl DevInfo {
    /// Writes the DevInfo subtree.
    pub fn write(&self, t: &mut Tree) -> Result<(), TreeError> {
        t.set("./DevInfo/DevId", "chr", &self.dev_id)?;
        t.set("./DevInfo/Man", "chr", &self.man)?;
        t.set("./DevInfo/Mod", "chr", &self.model)?;
        t.set("./DevInfo/DmV", "chr", &self.dm_v)?;
        t.set("./DevInfo/Lang", "chr", &self.lang)
    }

    /// Reads DevInfo from the items of a package-1 Replace (any of `./DevInfo/X` or `DevInfo/X`).
    pub fn from_items(items: &[Item]) -> Option<Self> {
        let mut d = DevInfo::default();
        let mut any = false;
        for i in items {
            let uri = i.source.as_ref().or(i.target.as_ref())?.uri.as_str();
            let Ok(path) = normalize(uri) else { continue };
            let v = i.data.clone().unwrap_or_default();
            let field = match path.as_str() {
                "./DevInfo/DevId" => &mut d.dev_id,
                "./DevInfo/Man" => &mut d.man,
                "./DevInfo/Mod" => &mut d.model,
                "./DevInfo/DmV" => &mut d.dm_v,
                "./DevInfo/Lang" => &mut d.lang,
                _ => continue,
            };
            *field = v;
            any = true;
        }
        any.then_some(d)
    }

    /// The DevInfo items of a package-1 Replace.
    pub fn items(&self) -> Vec<Item> {
        [
            ("DevId", &self.dev_id),
            ("Man", &self.man),
            ("Mod", &self.model),
            ("DmV", &self.dm_v),
            ("Lang", &self.lang),
        ]
        .into_iter()
        .map(|(k, v)| Item {
            source: Some(super::message::Location::uri(format!("./DevInfo/{k}"))),
            meta: Meta::format("chr"),
            data: Some(v.clone()),
            ..Item::default()
        })
        .collect()
    }
}

impl DevDetail {
    /// Writes the DevDetail subtree.
    pub fn write(&self, t: &mut Tree) -> Result<(), TreeError> {
        t.set("./DevDetail/DevTyp", "chr", &self.dev_typ)?;
        t.set("./DevDetail/OEM", "chr", &self.oem)?;
        t.set("./DevDetail/FwV", "chr", &self.fw_v)?;
        t.set("./DevDetail/SwV", "chr", &self.sw_v)?;
        t.set("./DevDetail/HwV", "chr", &self.hw_v)?;
        t.set(
            "./DevDetail/LrgObj",
            "bool",
            if self.lrg_obj { "true" } else { "false" },
        )?;
        t.set("./DevDetail/URI/MaxDepth", "int", MAX_DEPTH.to_string())?;
        t.set(
            "./DevDetail/URI/MaxTotLen",
            "int",
            MAX_TOTAL_LEN.to_string(),
        )?;
        t.set(
            "./DevDetail/URI/MaxSegLen",
            "int",
            MAX_SEGMENT_LEN.to_string(),
        )
    }

    /// Reads DevDetail from Results items of a `Get ./DevDetail?list=StructData`.
    pub fn from_items(items: &[Item]) -> Option<Self> {
        let mut d = DevDetail::default();
        let mut any = false;
        for i in items {
            let Some(src) = i.source.as_ref() else {
                continue;
            };
            let Ok(path) = normalize(&src.uri) else {
                continue;
            };
            let v = i.data.clone().unwrap_or_default();
            match path.as_str() {
                "./DevDetail/DevTyp" => d.dev_typ = v,
                "./DevDetail/OEM" => d.oem = v,
                "./DevDetail/FwV" => d.fw_v = v,
                "./DevDetail/SwV" => d.sw_v = v,
                "./DevDetail/HwV" => d.hw_v = v,
                "./DevDetail/LrgObj" => d.lrg_obj = v.eq_ignore_ascii_case("true"),
                _ => continue,
            }
            any = true;
        }
        any.then_some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalize_and_refuse_escapes() {
        assert_eq!(normalize("DevInfo/Man").unwrap(), "./DevInfo/Man");
        assert_eq!(normalize("./DevInfo/Man/").unwrap(), "./DevInfo/Man");
        assert_eq!(normalize(".").unwrap(), ".");
        assert!(normalize("./a/../b").is_err());
        assert!(normalize("./a//b").is_err());
        assert_eq!(normalize(&"a/".repeat(600)), Err(TreeError::TooLong));
    }

    #[test]
    fn get_leaf_interior_and_lists() {
        let mut t = Tree::new();
        DevInfo {
            dev_id: "IMEI:1".into(),
            man: "Acme".into(),
            model: "M1".into(),
            dm_v: "1.2".into(),
            lang: "en".into(),
        }
        .write(&mut t)
        .unwrap();
        let leaf = t.get_items("./DevInfo/Man").unwrap();
        assert_eq!(leaf[0].data.as_deref(), Some("Acme"));
        assert_eq!(leaf[0].meta.format.as_deref(), Some("chr"));
        let interior = t.get_items("./DevInfo").unwrap();
        assert_eq!(interior[0].data.as_deref(), Some("DevId/DmV/Lang/Man/Mod"));
        let s = t.get_items("./DevInfo?list=Struct").unwrap();
        assert_eq!(s.len(), 6);
        assert!(s[1..].iter().all(|i| i.data.is_none()));
        let sd = t.get_items("./DevInfo?list=StructData").unwrap();
        assert!(sd.iter().any(|i| i.data.as_deref() == Some("M1")));
        assert_eq!(
            DevInfo::from_items(&t.get_items("./DevInfo?list=StructData").unwrap()[1..])
                .unwrap()
                .model,
            "M1"
        );
        assert_eq!(
            t.get_items("./Nope").unwrap_err().status(),
            StatusCode::NotFound
        );
        assert!(t.get_items("./DevInfo?list=Bogus").is_err());
        assert_eq!(
            t.add("./DevInfo/Man", "chr", None).unwrap_err().status(),
            StatusCode::AlreadyExists
        );
        t.delete("./DevInfo").unwrap();
        assert!(t.get("./DevInfo/Man").is_none());
        assert_eq!(t.set("./DevInfo", "node", "x"), Ok(()));
    }
}
