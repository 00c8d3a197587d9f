//! Private NATS servers (JetStream on) for the scale-out tests and
//! benchmarks, started the way [`crate::Cluster`] starts PostgreSQL: a
//! fresh directory for the store, a free loopback port, a watchdog that
//! stops the server when the owning process exits, everything removed on drop.

use anyhow::{bail, Context, Result};
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Options for [`NatsServer::start_with`].
#[derive(Debug, Clone, Default)]
pub struct NatsConfig {
    /// The largest message the server accepts (`max_payload`; its default is 1 MB).
    pub max_payload: Option<u64>,
    /// The JetStream storage the server grants its streams, in bytes
    /// (`max_file_store`); 64 GB when `None` (see `write_config`).
    pub max_file_store: Option<u64>,
}

/// A running private `nats-server -js`.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
}

/// The JetStream storage a private server grants its streams unless
/// configured (see `write_config`).
const MAX_FILE_STORE: u64 = 64 << 30;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The `nats-server` program: `$NATS_SERVER`, else the first on `PATH` or in `/usr/sbin`.
pub fn nats_server_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("NATS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    for dir in path.split(':').chain(["/usr/sbin", "/usr/local/bin"]) {
        let candidate = Path::new(dir).join("nats-server");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("nats-server is not installed: run ./scripts/setup.sh (the Debian package nats-server) or set NATS_SERVER")
}

impl NatsServer {
    /// Starts a server with default settings.
    pub fn start() -> Result<NatsServer> {
        NatsServer::start_with(NatsConfig::default())
    }

    /// Starts a server as configured, in a fresh directory, on a free port.
    pub fn start_with(config: NatsConfig) -> Result<NatsServer> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("walcast-nats-{}-{n}-{nanos:x}", std::process::id()));
        fs::create_dir_all(dir.join("store"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let mut server = NatsServer {
            child: None,
            dir,
            port: 0,
        };
        let mut last = None;
        for _ in 0..5 {
            server.port = crate::free_port()?;
            server.write_config(&config)?;
            match server.run() {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        if let Some(e) = last {
            return Err(e);
        }
        server.spawn_watchdog();
        Ok(server)
    }

    fn write_config(&self, config: &NatsConfig) -> Result<()> {
        // A stream reserves its max_bytes against max_file_store, which
        // by default is 75% of the disk free when the server starts: on a
        // busy disk the relay's 1 GB stream would be refused although the
        // tests write a few MB. An explicit limit makes the tests
        // independent of the free disk.
        let mut conf = format!(
            "listen: 127.0.0.1:{}\njetstream {{\n  store_dir: \"{}\"\n  max_file_store: {}\n}}\n",
            self.port,
            self.dir.join("store").display(),
            config.max_file_store.unwrap_or(MAX_FILE_STORE)
        );
        if let Some(m) = config.max_payload {
            conf.push_str(&format!("max_payload: {m}\n"));
        }
        fs::write(self.dir.join("nats.conf"), conf).context("writing nats.conf")
    }

    /// Starts the process and waits until it accepts clients with JetStream on.
    fn run(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))?;
        let child = Command::new(nats_server_bin()?)
            .arg("-c")
            .arg(self.dir.join("nats.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting nats-server")?;
        // The watchdog reads it.
        fs::write(self.dir.join("pid"), child.id().to_string())?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    bail!("nats-server exited ({status}):\n{}", self.log());
                }
            }
            if let Ok(s) = TcpStream::connect(("127.0.0.1", self.port)) {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut info = String::new();
                let _ = BufReader::new(s).read_line(&mut info);
                if info.starts_with("INFO") && info.contains("\"jetstream\":true") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "nats-server did not accept clients with JetStream within 15 s:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server as an operator does (SIGTERM: it writes its store
    /// out and exits; SIGKILL after 10 s). What it stored stays in its
    /// directory. (A single-replica JetStream server killed without that
    /// can lose what it acknowledged since its last sync: docs/scale-out.md.)
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", c.id())])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Starts the server again with the same store and port.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.run()
    }

    /// The server's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Stops the server (and removes its directory) when this process exits
    /// without dropping it.
    fn spawn_watchdog(&self) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
             kill -KILL \"$(cat '{dir}/pid')\" 2>/dev/null; rm -rf '{dir}'",
            pid = std::process::id(),
            dir = self.dir.display(),
        );
        crate::watchdog(&script);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
