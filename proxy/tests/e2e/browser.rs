//! Pages in headless Chromium, all through the JavaScript client the proxy
//! serves (`/client/index.js`): the demo page, the client imported by a
//! page, and the browser example opened as a file.

use crate::support;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::Proxy;
use walcast_tests::{cluster, TestDb};

struct Browser(Child, std::path::PathBuf);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .ok()?;
    // The devtools server may keep the connection open: take what arrived.
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let out = String::from_utf8_lossy(&buf).into_owned();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

struct Page {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    next_id: u64,
}

impl Page {
    fn eval(&mut self, expr: &str) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = serde_json::json!({"id": id, "method": "Runtime.evaluate", "params": {"expression": expr, "returnByValue": true}});
        self.ws
            .send(tungstenite::Message::Text(msg.to_string().into()))
            .expect("send CDP command");
        loop {
            let m = self.ws.read().expect("read CDP answer");
            if let tungstenite::Message::Text(t) = m {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("CDP JSON");
                if v["id"] == id {
                    return v["result"]["result"]["value"].clone();
                }
            }
        }
    }

    fn wait_for(
        &mut self,
        expr: &str,
        want: impl Fn(&serde_json::Value) -> bool,
        what: &str,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.eval(expr);
            if want(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last value {v}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The table's rows as text, one per line: `action class|cells`.
const ROWS: &str = "Array.from(document.querySelectorAll('#rows tr')).map(r => r.className + '|' + r.textContent).join('\\n')";

/// Chromium (headless) on `url`, and the devtools connection of its page.
fn open(url: &str) -> (Browser, Page) {
    let dbg = free_port();
    // A profile of its own: a second Chromium on the same profile hands its
    // page to the first and exits (the tests of this file run at once).
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let profile = std::env::temp_dir().join(format!("walcast-chromium-{}-{n}", std::process::id()));
    let child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--remote-debugging-port={dbg}"))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting chromium (installed by scripts/setup.sh)");
    let mut browser = Browser(child, profile);
    // Keep reading chromium's log so it never blocks on a full pipe.
    if let Some(err) = browser.0.stderr.take() {
        std::thread::spawn(move || for _ in BufReader::new(err).lines() {});
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    let ws_url = loop {
        let last = http_get(dbg, "/json/list");
        let list = last
            .clone()
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok());
        let found = list.as_ref().and_then(|l| l.as_array()).and_then(|pages| {
            pages
                .iter()
                .find(|p| {
                    p["type"] == "page"
                        && p["url"].as_str().is_some_and(|u| {
                            u.split(['?', '#']).next() == url.split(['?', '#']).next()
                        })
                })
                .and_then(|p| p["webSocketDebuggerUrl"].as_str().map(str::to_owned))
        });
        if let Some(u) = found {
            break u;
        }
        assert!(
            Instant::now() < deadline,
            "chromium never showed {url}: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (ws, _) = tungstenite::connect(ws_url.as_str()).expect("CDP websocket");
    let page = Page { ws, next_id: 0 };

    (browser, page)
}

#[test]
fn demo_page_shows_an_inserted_row() {
    let mut db = TestDb::new("browser");
    db.exec("CREATE TABLE users (id int PRIMARY KEY, name text, age int)");
    let proxy = Proxy::start(cluster(), &db.name, &format!("{}_proxy", db.name), &[]);
    let (browser, mut page) = open(&format!("http://127.0.0.1:{}/", proxy.port));

    page.wait_for(
        "document.getElementById('status').textContent",
        |v| {
            v.as_str()
                .is_some_and(|s| s.starts_with("subscribed to *:users"))
        },
        "the page to subscribe",
    );
    db.exec("INSERT INTO users VALUES (42, 'browser-row', 33)");
    let row = page.wait_for(
        ROWS,
        |v| v.as_str().is_some_and(|s| s.contains("browser-row")),
        "the inserted row in the table",
    );
    let text = row.as_str().unwrap_or("");
    assert!(
        text.starts_with("I|I"),
        "the row is shown as an insert: {text}"
    );
    assert!(text.contains("public.users"), "{text}");
    assert!(text.contains("\"id\":42"), "{text}");

    // The connection drops; a row committed while it is away arrives after
    // the client reconnects with `after`, and nothing is shown twice.
    page.eval("window.subscription.reconnect(); 0");
    db.exec("INSERT INTO users VALUES (43, 'while-away', 34)");
    let rows = page.wait_for(
        ROWS,
        |v| v.as_str().is_some_and(|s| s.contains("while-away")),
        "the row committed while the page was disconnected",
    );
    let text = rows.as_str().unwrap_or("");
    assert_eq!(text.matches("browser-row").count(), 1, "{text}");
    assert_eq!(text.matches("while-away").count(), 1, "{text}");
    let status = page.eval("document.getElementById('status').textContent");
    assert!(
        status
            .as_str()
            .is_some_and(|s| s.starts_with("subscribed to")),
        "{status}"
    );
    // The page's live view holds the rows; a delete takes one away.
    const VIEW: &str = "Array.from(document.querySelectorAll('#view tr')).map(r => r.cells[0].textContent).sort().join(';')";
    page.wait_for(
        VIEW,
        |v| v.as_str() == Some("[42];[43]"),
        "both rows in the view",
    );
    db.exec("DELETE FROM users WHERE id = 42");
    let view = page.wait_for(VIEW, |v| v.as_str() == Some("[43]"), "the deleted row gone");
    assert_eq!(view.as_str(), Some("[43]"));
    drop(browser);
}

#[test]
fn the_typescript_client_subscribes_and_resumes_in_the_browser() {
    support::js::build();
    let mut db = TestDb::new("browser_client");
    db.exec("CREATE TABLE bundle (id int PRIMARY KEY)");
    let proxy = Proxy::start(cluster(), &db.name, &format!("{}_proxy", db.name), &[]);
    let (browser, mut page) = open(&format!("http://127.0.0.1:{}/healthz", proxy.port));
    // The client module, as the proxy serves it, subscribed to that proxy.
    let port = proxy.port;
    page.eval(&format!(
        "window.got = []; window.opened = 0; window.failed = null;
         import('http://127.0.0.1:{port}/client/index.js').then(m => {{
           window.sub = m.subscribe('http://127.0.0.1:{port}', 'insert:bundle');
           window.sub.on('open', () => window.opened++);
           (async () => {{
             try {{ for await (const f of window.sub) if (m.isChange(f)) window.got.push(f.columns.id); }}
             catch (e) {{ window.failed = String(e); }}
           }})();
         }}, e => {{ window.failed = String(e); }}); 0"
    ));
    page.wait_for(
        "window.failed || window.opened",
        |v| v.as_i64().is_some_and(|n| n >= 1) || v.is_string(),
        "the client to connect",
    );
    proxy.wait_clients(1);
    db.exec("INSERT INTO bundle SELECT generate_series(1, 5)");
    page.wait_for(
        "window.failed || window.got.length",
        |v| v.as_i64() == Some(5) || v.is_string(),
        "five inserts",
    );
    // A dropped socket: the client reconnects and resumes after id 5.
    page.eval("window.sub.reconnect(); 0");
    db.exec("INSERT INTO bundle SELECT generate_series(6, 9)");
    let got = page.wait_for(
        "window.failed || JSON.stringify(window.got)",
        |v| {
            v.as_str()
                .is_some_and(|s| s.contains(",9]") || !s.starts_with('['))
        },
        "the inserts after the reconnect",
    );
    assert_eq!(got.as_str(), Some("[1,2,3,4,5,6,7,8,9]"), "{got}");
    assert!(
        page.eval("window.opened").as_i64() >= Some(2),
        "reconnected"
    );
    drop(browser);
}

#[test]
fn the_browser_example_opened_as_a_file_shows_current_rows_then_changes() {
    support::js::build();
    let mut db = TestDb::new("browser_example");
    db.exec("CREATE TABLE people (id int PRIMARY KEY, name text, age int)");
    db.exec("INSERT INTO people VALUES (1, 'ann', 30), (2, 'bob', 31), (3, 'carol', 32), (5, 'eve', 60)");
    let proxy = Proxy::start(cluster(), &db.name, &format!("{}_proxy", db.name), &[]);
    let file = walcast_tests::repo_root()
        .join("examples/browser/live-table.html")
        .canonicalize()
        .expect("examples/browser/live-table.html");
    // A file:// page: its origin is "null", so the client module comes from
    // the proxy by CORS.
    let (browser, mut page) = open(&format!(
        "file://{}?host=127.0.0.1:{}&query=*:people:age.lt.40&key=id",
        file.display(),
        proxy.port
    ));
    const TABLE: &str = "Array.from(document.querySelectorAll('#rows tr')).map(r => Array.from(r.cells).map(c => c.textContent).join(',')).sort().join(';')";
    const STATUS: &str = "document.getElementById('status').textContent";
    page.wait_for(
        STATUS,
        |v| {
            v.as_str()
                .is_some_and(|s| s.contains("rows appear, change and go") || s.contains("error"))
        },
        "the current rows to be read",
    );
    let status = page.eval(STATUS);
    assert!(
        status
            .as_str()
            .is_some_and(|s| s.contains("rows appear, change and go")),
        "{status}"
    );
    assert_eq!(
        page.eval(TABLE).as_str(),
        Some("1,ann,30;2,bob,31;3,carol,32"),
        "the current rows"
    );
    db.exec("INSERT INTO people VALUES (4, 'dave', 33)");
    db.exec("UPDATE people SET name = 'bobby' WHERE id = 2");
    db.exec("DELETE FROM people WHERE id = 1");
    let table = page.wait_for(
        TABLE,
        |v| v.as_str() == Some("2,bobby,31;3,carol,32;4,dave,33"),
        "the insert, update and delete",
    );
    assert_eq!(table.as_str(), Some("2,bobby,31;3,carol,32;4,dave,33"));
    assert_eq!(
        page.eval("document.getElementById('count').textContent")
            .as_str(),
        Some("3 rows")
    );
    // Rows leave the filtered view (an update moves one out), enter it (an
    // update moves one in, its key changes) and go (a delete).
    db.exec("UPDATE people SET age = 45 WHERE id = 3");
    db.exec("UPDATE people SET age = 35 WHERE id = 5");
    db.exec("UPDATE people SET id = 40 WHERE id = 4");
    let table = page.wait_for(
        TABLE,
        |v| v.as_str() == Some("2,bobby,31;40,dave,33;5,eve,35"),
        "a row moved out, one moved in, a key changed",
    );
    assert_eq!(table.as_str(), Some("2,bobby,31;40,dave,33;5,eve,35"));
    // The socket drops; while it is away a row is deleted and one moves
    // out: the view reads its rows again and both go.
    page.eval("window.view.subscription.reconnect(); 0");
    db.exec("DELETE FROM people WHERE id = 2");
    db.exec("UPDATE people SET age = 70 WHERE id = 5");
    let table = page.wait_for(
        TABLE,
        |v| v.as_str() == Some("40,dave,33"),
        "the rows gone while the socket was down",
    );
    assert_eq!(table.as_str(), Some("40,dave,33"));
    drop(browser);
}
