//! Reading a directory of YAML manifests: the same files `kubectl apply -f DIR` would take.
//!
//! Every document becomes a [`Manifest`]: its JSON value plus the source line of every field, so later
//! errors can point at `file:line` of the offending field, not just of the document.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use serde_saphyr::Spanned;

use super::ConfigError;

/// Largest manifest file read; larger files are refused rather than parsed.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// Most files read from one directory tree.
pub const MAX_FILES: usize = 10_000;

/// One YAML document of one file.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// File it came from.
    pub file: PathBuf,
    /// Line of the document's first line (1-based).
    pub line: usize,
    /// The document as JSON.
    pub value: Value,
    /// Line of each field, keyed by its path (`spec.rules[0].action`).
    lines: HashMap<String, usize>,
}

/// Removes every member whose value is `null`, at any depth, as the API server prunes them: an
/// API object's null field decodes as an absent one, so it is validated as one too (CEL's
/// `has()` sees a null member as set). Null list elements stay, and fail their type check.
pub fn drop_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

impl Manifest {
    /// An object that did not come from a file (an API object, say): `source` names where it came
    /// from, and errors point at the field path without a line.
    pub fn from_value(source: impl Into<PathBuf>, mut value: Value) -> Self {
        drop_nulls(&mut value);
        Self {
            file: source.into(),
            line: 1,
            value,
            lines: HashMap::new(),
        }
    }

    /// Best line for a field path: the field's own line, or that of its nearest ancestor.
    pub fn line_of(&self, path: &str) -> usize {
        let mut p = path.to_string();
        loop {
            if let Some(line) = self.lines.get(&p) {
                return *line;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p.truncate(i),
                None => return self.line,
            }
        }
    }

    /// `kind`, or empty.
    pub fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or_default()
    }

    /// `apiVersion`, or empty.
    pub fn api_version(&self) -> &str {
        self.value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// `metadata.name`, or empty.
    pub fn name(&self) -> &str {
        self.value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// `metadata.namespace`, defaulting to `default` as `kubectl apply` does.
    pub fn namespace(&self) -> &str {
        self.value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
    }

    /// An error about a field of this object.
    pub fn error(&self, path: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: Some(self.line_of(path)),
            object: Some(format!("{} {}/{}", self.kind(), self.namespace(), self.name())),
            path: (!path.is_empty()).then(|| path.to_string()),
            message: message.into(),
        }
    }
}

/// Lists every `*.yaml` / `*.yml` file under `dir`, sorted, skipping hidden entries.
pub fn list_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d)
            .map_err(|e| ConfigError::file(&d, format!("cannot read directory: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| ConfigError::file(&d, format!("cannot read directory: {e}")))?;
            let path = entry.path();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let ty = entry
                .file_type()
                .map_err(|e| ConfigError::file(&path, format!("cannot stat: {e}")))?;
            if ty.is_dir() || (ty.is_symlink() && path.is_dir()) {
                stack.push(path);
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                files.push(path);
            }
        }
        if files.len() > MAX_FILES {
            return Err(ConfigError::file(
                dir,
                format!("more than {MAX_FILES} manifest files"),
            ));
        }
    }
    files.sort();
    Ok(files)
}

/// Reads and parses one file into its documents. Empty documents are skipped.
pub fn read_file(path: &Path) -> Result<Vec<Manifest>, ConfigError> {
    let bytes =
        super::secrets::read_regular_file(path, MAX_FILE_BYTES).map_err(|e| ConfigError::file(path, e))?;
    let text = String::from_utf8(bytes).map_err(|_| ConfigError::file(path, "file is not UTF-8"))?;
    parse_documents(path, &text)
}

/// Splits a YAML stream at its `---` markers and parses every document.
pub fn parse_documents(path: &Path, text: &str) -> Result<Vec<Manifest>, ConfigError> {
    let mut manifests = Vec::new();
    for (start_line, doc) in split_documents(text) {
        if doc
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            continue;
        }
        let root: Spanned<Node> = serde_saphyr::from_str(&doc).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: Some(start_line + error_line(&e).unwrap_or(1) - 1),
            object: None,
            path: None,
            message: format!("YAML syntax error: {}", first_line(&e.to_string())),
        })?;
        let mut lines = HashMap::new();
        let value = root.value.into_json(String::new(), start_line - 1, &mut lines);
        if value.is_null() {
            continue;
        }
        if !value.is_object() {
            return Err(ConfigError {
                file: path.to_path_buf(),
                line: Some(start_line),
                object: None,
                path: None,
                message: "a manifest must be a mapping with apiVersion, kind and metadata".into(),
            });
        }
        let mut manifest = Manifest {
            file: path.to_path_buf(),
            line: start_line,
            value,
            lines,
        };
        // An empty value (an unset template variable) would read as an absent field: for a
        // rule's methods or paths, as matching everything. Written by hand, it is refused.
        // Metadata's (`creationTimestamp: null`, as kubectl prints it) says nothing.
        if let Some(map) = manifest.value.as_object_mut() {
            map.retain(|k, v| !(matches!(k.as_str(), "metadata" | "status") && v.is_null()));
            map.get_mut("metadata").into_iter().for_each(drop_nulls);
            map.get_mut("status").into_iter().for_each(drop_nulls);
        }
        if let Some(field) = null_member(&manifest.value, "") {
            // A Secret's keys may be values pasted in the wrong place: named, never quoted.
            let secret_data =
                manifest.kind() == "Secret" && ["data.", "stringData."].iter().any(|p| field.starts_with(p));
            return Err(match secret_data {
                true => manifest.error(
                    field.split('.').next().unwrap_or_default(),
                    "Invalid value: a key has no value (null)",
                ),
                false => manifest.error(
                    &field,
                    "Invalid value: null: give the field a value, or leave it out",
                ),
            });
        }
        manifests.push(manifest);
    }
    Ok(manifests)
}

/// The path of the first member whose value is `null`, if any.
fn null_member(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if v.is_null() { Some(p) } else { null_member(v, &p) }
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| null_member(v, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// (first line of the document, 1-based; document text). The `---` line itself is not included.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let is_marker = line.starts_with("---") && line[3..].chars().next().is_none_or(char::is_whitespace);
        if is_marker {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 2;
            // Content after the marker on the same line (`--- {a: 1}`) belongs to the document.
            let rest = line[3..].trim();
            if !rest.is_empty() && !rest.starts_with('#') {
                start = i + 1;
                current.push_str(rest);
                current.push('\n');
            }
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs.push((start, current));
    docs
}

fn error_line(e: &serde_saphyr::Error) -> Option<usize> {
    e.location().map(|l| l.line() as usize).filter(|l| *l > 0)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

/// A YAML node whose children carry their source location.
#[derive(Debug)]
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(String, Spanned<Node>)>),
}

impl Node {
    fn into_json(self, path: String, offset: usize, lines: &mut HashMap<String, usize>) -> Value {
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(b),
            Node::Int(i) => Value::from(i),
            Node::UInt(u) => Value::from(u),
            Node::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
            Node::Str(s) => Value::String(s),
            Node::Seq(items) => Value::Array(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let p = format!("{path}[{i}]");
                        lines.insert(p.clone(), offset + item.referenced.line() as usize);
                        item.value.into_json(p, offset, lines)
                    })
                    .collect(),
            ),
            Node::Map(entries) => {
                let mut map = Map::new();
                for (key, child) in entries {
                    let p = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    lines.insert(p.clone(), offset + child.referenced.line() as usize);
                    let v = child.value.into_json(p, offset, lines);
                    map.insert(key, v);
                }
                Value::Object(map)
            }
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::UInt(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries: Vec<(String, Spanned<Node>)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let value = map.next_value::<Spanned<Node>>()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FIFO among the manifests would block the loader (and every later reload) for good.
    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("x.yaml");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let e = read_file(&fifo).unwrap_err().to_string();
        assert!(e.contains("x.yaml") && e.contains("not a regular file"), "{e}");
        let big = dir.path().join("big.yaml");
        std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES as usize + 1]).unwrap();
        let e = read_file(&big).unwrap_err().to_string();
        assert!(e.contains("file is larger than"), "{e}");
    }

    #[test]
    fn documents_and_field_lines() {
        let text = "# leading comment\napiVersion: v1\nkind: A\n---\n\n---\napiVersion: v1\nkind: B\nspec:\n  items:\n    - name: x\n      port: 1\n";
        let docs = parse_documents(Path::new("f.yaml"), text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].line, 1);
        assert_eq!(docs[0].line_of("kind"), 3);
        assert_eq!(docs[1].kind(), "B");
        assert_eq!(docs[1].line_of("spec.items[0].port"), 12);
        assert_eq!(docs[1].line_of("spec.items[0].missing"), 11);
    }

    #[test]
    fn syntax_errors_carry_the_file_line() {
        let text = "apiVersion: v1\nkind: A\n---\nkind: B\nspec: [unclosed\n";
        let err = parse_documents(Path::new("f.yaml"), text).unwrap_err();
        assert!(err.message.starts_with("YAML syntax error"), "{err}");
        assert!(err.line.unwrap() >= 4, "{err}");
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let err = parse_documents(Path::new("f.yaml"), "kind: A\nkind: B\n").unwrap_err();
        assert!(err.message.contains("duplicate"), "{err}");
    }

    #[test]
    fn scalars_keep_their_types() {
        let docs = parse_documents(
            Path::new("f.yaml"),
            "a: 1\nb: true\nc: \"1\"\nd: 1.5\nh: [1, null]\nmetadata: {name: x, creationTimestamp: null}\n",
        )
        .unwrap();
        // A null list element stays (and fails its type check); metadata's nulls say nothing.
        assert_eq!(
            docs[0].value,
            serde_json::json!({"a": 1, "b": true, "c": "1", "d": 1.5, "h": [1, null], "metadata": {"name": "x"}})
        );
        // Elsewhere a null is refused where it is, not read as an absent field.
        for (text, path) in [
            (
                "kind: A\nspec:\n  rules:\n  - methods:\n",
                "spec.rules[0].methods",
            ),
            ("kind: A\nspec: {grant: {duration: ~}}\n", "spec.grant.duration"),
            ("kind: A\nspec: null\n", "spec"),
            ("kind: Secret\nstringData: {sk-live-abc123}\n", "stringData"),
        ] {
            let err = parse_documents(Path::new("f.yaml"), text).unwrap_err();
            assert_eq!(err.path.as_deref(), Some(path), "{text}");
            assert!(err.message.contains("null"), "{err}");
            assert!(!err.to_string().contains("sk-live"), "{err}");
        }
        let docs = parse_documents(Path::new("f.yaml"), "kind: A\nmetadata: null\nstatus: ~\n").unwrap();
        assert_eq!(docs[0].value, serde_json::json!({"kind": "A"}));
    }
}
