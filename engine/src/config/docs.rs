//! `docs/operating.md`'s field table, checked against the [`Config`] type:
//! every field of the type has a row naming it by its dotted path (section
//! included), and every row names real fields.
//!
//! # Design
//!
//! The fields of the type are what serializing a config yields (JSON keeps
//! absent options as `null`, so each field shows up); fields serde skips
//! (the signer, open mode) are not file settings and need no row. The table
//! is the one under the `### Fields` heading: its first column lists
//! backquoted dotted paths, its second the range.

use super::Config;

/// One row of the table.
pub(super) struct Row {
    /// The dotted paths in its first column.
    pub fields: Vec<String>,
    /// Its second column.
    pub range: String,
}

/// The rows of the `### Fields` table.
pub(super) fn field_table() -> Vec<Row> {
    let doc = include_str!("../../../docs/operating.md");
    let section = doc
        .split("\n### Fields\n")
        .nth(1)
        .and_then(|d| d.split("\n#").next())
        .expect("docs/operating.md has a `### Fields` section");
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let fields = cells[1]
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect();
            Row {
                fields,
                range: cells.get(2).copied().unwrap_or("").to_string(),
            }
        })
        .collect()
}

/// Every file setting of [`Config`], as a dotted path.
pub(super) fn type_fields() -> Vec<String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, v, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let value = serde_json::to_value(Config::recommended(None)).expect("a config serializes");
    let mut out = Vec::new();
    walk("", &value, &mut out);
    out
}

#[test]
fn the_field_table_lists_every_field_and_only_fields() {
    let table = field_table();
    let fields = type_fields();
    assert!(fields.len() > 40, "{fields:?}");
    let documented: Vec<&String> = table.iter().flat_map(|r| &r.fields).collect();
    for f in &fields {
        assert!(
            documented.contains(&f),
            "`{f}` is missing from docs/operating.md's field table"
        );
    }
    for row in &table {
        assert!(!row.fields.is_empty() && !row.range.is_empty());
        for f in &row.fields {
            assert!(
                fields.contains(f),
                "docs/operating.md's field table names `{f}`, which is not a field"
            );
        }
    }
}
