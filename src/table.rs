//! How the management commands print an API answer for a person: a list as an aligned table
//! of chosen columns (with the cursor of the next page under it), one object as `key: value`
//! lines. Scripts get the JSON itself (`--json`, or whenever stdout is not a terminal). Pure.

use serde_json::Value;

/// One column: its heading and where its value is in an item (a JSON pointer, `/a/b`).
pub struct Column {
    pub heading: &'static str,
    pub pointer: &'static str,
    /// Show at most this many characters (ids are long; their start is enough to tell).
    pub max: Option<usize>,
}

impl Column {
    pub const fn new(heading: &'static str, pointer: &'static str) -> Self {
        Column {
            heading,
            pointer,
            max: None,
        }
    }

    pub const fn short(heading: &'static str, pointer: &'static str, max: usize) -> Self {
        Column {
            heading,
            pointer,
            max: Some(max),
        }
    }
}

/// A cell's text: strings bare, null as `-`, anything else as compact JSON.
fn cell(v: Option<&Value>, max: Option<usize>) -> String {
    let text = match v {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match max {
        Some(m) if text.chars().count() > m => {
            let mut cut: String = text.chars().take(m.saturating_sub(1)).collect();
            cut.push('…');
            cut
        }
        _ => text,
    }
}

/// `items` as a table of `columns`; a `next` cursor adds a line saying how to get the next page.
pub fn list(items: &[Value], columns: &[Column], next: Option<&str>) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| {
            columns
                .iter()
                .map(|c| cell(item.pointer(c.pointer), c.max))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([c.heading.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, text) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(text);
            } else {
                let pad = widths[i] - text.chars().count();
                out.push_str(text);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(columns.iter().map(|c| c.heading).collect());
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    if items.is_empty() {
        out.push_str("(none)\n");
    }
    if let Some(cursor) = next {
        out.push_str(&format!("more: add --cursor {cursor}\n"));
    }
    out
}

/// One object as `key  value` lines, in key order; nested values as compact JSON.
pub fn object(v: &Value) -> String {
    match v.as_object() {
        Some(map) => {
            let width = map.keys().map(|k| k.len()).max().unwrap_or(0);
            map.iter()
                .map(|(k, v)| format!("{k:<width$}  {}\n", cell(Some(v), None)))
                .collect()
        }
        None => format!("{}\n", cell(Some(v), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_align_and_say_how_to_go_on() {
        let items = [
            json!({"id": "abcdef0123456789", "state": "issued", "n": 3}),
            json!({"id": "ff", "state": null, "n": {"x": 1}}),
        ];
        let cols = [
            Column::short("ID", "/id", 8),
            Column::new("STATE", "/state"),
            Column::new("N", "/n"),
        ];
        let text = list(&items, &cols, Some("12:ab"));
        assert_eq!(
            text,
            "ID        STATE   N\nabcdef0…  issued  3\nff        -       {\"x\":1}\nmore: add --cursor 12:ab\n"
        );
        assert!(list(&[], &cols, None).ends_with("(none)\n"));
    }

    #[test]
    fn objects_print_as_key_value_lines() {
        let text = object(&json!({"id": "j-1", "result_code": 1200, "reason": null}));
        assert_eq!(
            text,
            "id           j-1\nreason       -\nresult_code  1200\n"
        );
    }
}
