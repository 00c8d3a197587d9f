//! Rows of a table as a client applies them from frames, keyed by the
//! JSON of their key columns, and compared with the table itself; and a
//! writer of seeded random transactions to change the table meanwhile.

use super::rng::Rng;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use walcast_tests::{cluster, TestDb};

/// Rows by the JSON of their key columns, changed by frames as a client
/// applies them: `R` and `I` put the row, `U` moves it from its old key,
/// `D` and `L` (a held row left a filtered view) remove it, `T` empties
/// the table.
pub struct Rows {
    pub key: Vec<&'static str>,
    pub rows: BTreeMap<String, Value>,
}

impl Rows {
    pub fn new(key: &[&'static str]) -> Rows {
        Rows {
            key: key.to_vec(),
            rows: BTreeMap::new(),
        }
    }

    pub fn key_of(&self, row: &Value, frame: &Value) -> String {
        let parts: Vec<&Value> = self
            .key
            .iter()
            .map(|k| {
                let v = &row[*k];
                assert!(!v.is_null(), "no {k} in {frame}");
                v
            })
            .collect();
        serde_json::to_string(&parts).expect("key")
    }

    pub fn apply(&mut self, frame: &Value) {
        match frame["action"].as_str() {
            Some("I" | "R") => {
                let k = self.key_of(&frame["columns"], frame);
                self.rows.insert(k, frame["columns"].clone());
            }
            Some("U") => {
                if frame["identity"].is_object() {
                    let old = self.key_of(&frame["identity"], frame);
                    self.rows.remove(&old);
                }
                let k = self.key_of(&frame["columns"], frame);
                self.rows.insert(k, frame["columns"].clone());
            }
            Some("D" | "L") => {
                let k = self.key_of(&frame["identity"], frame);
                self.rows.remove(&k);
            }
            Some("T") => self.rows.clear(),
            _ => {}
        }
    }

    /// The table as PostgreSQL has it, in the same representation.
    pub fn read(db: &mut TestDb, table: &str, key: &[&'static str]) -> Rows {
        let mut rows = Rows::new(key);
        for r in db
            .client
            .query(&format!("SELECT row_to_json(t)::text FROM {table} t"), &[])
            .expect("reading the table")
        {
            let v: Value = serde_json::from_str(r.get::<_, &str>(0)).expect("row");
            let k = rows.key_of(&v, &v);
            rows.rows.insert(k, v);
        }
        rows
    }
}

/// Asserts the client's rows are the table's, naming the first differences.
pub fn assert_same(client: &Rows, table: &Rows, seed: u64) {
    let mut diffs = Vec::new();
    for (k, v) in &table.rows {
        match client.rows.get(k) {
            None => diffs.push(format!("missing {k}: {v}")),
            Some(c) if c != v => diffs.push(format!("{k}: client {c}, table {v}")),
            Some(_) => {}
        }
    }
    for (k, v) in &client.rows {
        if !table.rows.contains_key(k) {
            diffs.push(format!("extra {k}: {v}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "seed {seed}: {} differences, first: {:#?}",
        diffs.len(),
        &diffs[..diffs.len().min(10)]
    );
}

/// A writer on its own connection: random transactions from a seed until
/// stopped, counting them.
pub struct Writer {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(db: &str, seed: u64, sql: impl Fn(&mut Rng) -> String + Send + 'static) -> Writer {
        let (stop, done) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let conninfo = cluster().conninfo(db);
        let (halt, count) = (stop.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            let mut client =
                postgres::Client::connect(&conninfo, postgres::NoTls).expect("writer connects");
            let mut rng = Rng(seed);
            while !halt.load(Ordering::Relaxed) {
                let statement = sql(&mut rng);
                client
                    .batch_execute(&format!("BEGIN; {statement} COMMIT;"))
                    .unwrap_or_else(|e| panic!("writer: {statement}: {e:?}"));
                count.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(200 + rng.below(800)));
            }
        });
        Writer {
            stop,
            done,
            thread: Some(thread),
        }
    }

    /// Transactions committed so far.
    pub fn count(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits until the writer has committed `n` more transactions (for at
    /// most a minute): changes that happen while something else goes on.
    pub fn write_more(&self, n: u64) {
        let want = self.count() + n;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.count() < want {
            let running = self.thread.as_ref().is_some_and(|t| !t.is_finished());
            assert!(
                running,
                "the writer stopped at {} transactions",
                self.count()
            );
            assert!(
                std::time::Instant::now() < deadline,
                "the writer committed {} of {want} transactions within a minute",
                self.count()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the writer and waits for its last transaction to commit.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("writer");
        }
    }
}

/// One random operation on `items (id bigint primary key, v int, pad text)`:
/// inserts, updates of values, updates of keys, deletes.
pub fn item_operation(rng: &mut Rng) -> String {
    let id = 1 + rng.below(4000);
    match rng.below(10) {
        0..=2 => format!(
            "INSERT INTO items VALUES ({id}, {}, repeat('p', {})) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v;",
            rng.below(100),
            rng.below(50)
        ),
        3..=5 => format!("UPDATE items SET v = {} WHERE id = {id};", rng.below(100)),
        6 => format!(
            "UPDATE items SET id = {} WHERE id = {id} AND NOT EXISTS (SELECT 1 FROM items WHERE id = {});",
            id + 5000,
            id + 5000
        ),
        7 => format!(
            "UPDATE items SET v = v + 1 WHERE id = {id}; DELETE FROM items WHERE id = {};",
            1 + rng.below(4000)
        ),
        _ => format!("DELETE FROM items WHERE id = {id};"),
    }
}

pub fn items(db: &mut TestDb, rows: u64) {
    db.exec(&format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, v int, pad text); \
         INSERT INTO items SELECT g, g % 100, repeat('x', (g % 7)::int) FROM generate_series(1, {rows}) g; \
         ANALYZE items"
    ));
}
