//! A table applied from stream frames, for comparing with PostgreSQL: rows
//! of tables keyed by an integer `id`, changed by `I`/`U`/`D`/`T` frames
//! exactly as the plugin describes them.

use std::collections::BTreeMap;

/// Rows by table name, then by `id`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    pub tables: BTreeMap<String, BTreeMap<i64, serde_json::Value>>,
}

fn id_of(v: &serde_json::Value, what: &str, frame: &serde_json::Value) -> i64 {
    v["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("{what} has no integer id: {frame}"))
}

/// `public.items` or `"public"."items"` -> `items`.
fn bare_table(name: &str) -> String {
    name.rsplit('.')
        .next()
        .unwrap_or(name)
        .trim_matches('"')
        .to_owned()
}

impl Model {
    /// Applies one row change frame; other frames are ignored.
    pub fn apply(&mut self, frame: &serde_json::Value) {
        let table = frame["table"].as_str().unwrap_or_default().to_owned();
        match frame["action"].as_str() {
            // A snapshot row: the row as it is (inserted or replaced).
            Some("I" | "R") => {
                let id = id_of(&frame["columns"], "an insert", frame);
                self.tables
                    .entry(table)
                    .or_default()
                    .insert(id, frame["columns"].clone());
            }
            Some("U") => {
                let rows = self.tables.entry(table).or_default();
                if frame["identity"].is_object() {
                    rows.remove(&id_of(&frame["identity"], "an update's identity", frame));
                }
                let id = id_of(&frame["columns"], "an update", frame);
                rows.insert(id, frame["columns"].clone());
            }
            Some("D") => {
                let id = id_of(&frame["identity"], "a delete's identity", frame);
                self.tables.entry(table).or_default().remove(&id);
            }
            Some("T") => {
                for t in frame["tables"].as_array().into_iter().flatten() {
                    if let Some(t) = t.as_str() {
                        self.tables.remove(&bare_table(t));
                    }
                }
            }
            _ => {}
        }
    }

    /// Adds a row read from a snapshot page.
    pub fn put(&mut self, table: &str, row: serde_json::Value) {
        let id = id_of(&row, "a snapshot row", &row);
        self.tables
            .entry(table.to_owned())
            .or_default()
            .insert(id, row);
    }

    /// The rows of `table` (empty tables and missing tables are the same).
    pub fn rows(&self, table: &str) -> BTreeMap<i64, serde_json::Value> {
        self.tables.get(table).cloned().unwrap_or_default()
    }

    /// Reads `table` from PostgreSQL in the same representation.
    pub fn read_table(
        client: &mut postgres::Client,
        table: &str,
    ) -> BTreeMap<i64, serde_json::Value> {
        client
            .query(&format!("SELECT row_to_json(t)::text FROM {table} t"), &[])
            .expect("reading the table")
            .iter()
            .map(|r| {
                let v: serde_json::Value =
                    serde_json::from_str(r.get::<_, &str>(0)).expect("row json");
                (v["id"].as_i64().expect("id"), v)
            })
            .collect()
    }
}
