//! Private PostgreSQL clusters for walcast's tests, demo and benchmarks.
//!
//! [`Cluster::start`] runs `initdb` in a fresh directory, configures logical
//! decoding (`wal_level=logical`, slots, senders, walcast allowed in
//! `output_plugin_libraries` when the server has that setting), starts the
//! server on a free loopback port with its socket in the same directory and
//! waits until it accepts connections. PostgreSQL refuses to run as root, so
//! when run as root the server runs as the unprivileged OS user `walcast`
//! (created on first use).
//!
//! The cluster is stopped and its directory removed when the `Cluster` is
//! dropped, and also by a watchdog process when the owning process exits
//! without dropping it (a cluster held in a `static` by a test binary).

pub mod nats;

use anyhow::{anyhow, bail, Context, Result};
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The OS user the server runs as when the caller is root.
pub const OS_USER: &str = "walcast";
/// The database superuser every cluster is created with.
pub const SUPERUSER: &str = "postgres";

/// Options for [`Cluster::start_with`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Extra `postgresql.conf` lines (`name = value`).
    pub settings: Vec<(String, String)>,
    /// Run `CREATE EXTENSION walcast` in the `postgres` database.
    pub create_extension: bool,
    /// Keep the data directory after stopping (for debugging).
    pub keep: bool,
    /// Fixed port instead of a free one.
    pub port: Option<u16>,
    /// Fixed directory instead of a fresh temporary one.
    pub dir: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            settings: Vec::new(),
            create_extension: true,
            keep: false,
            port: None,
            dir: None,
        }
    }
}

impl Config {
    /// A cluster whose logical slots PostgreSQL invalidates once they fall
    /// 1 MB behind (`max_slot_wal_keep_size`): see `Cluster::outrun_slots`.
    pub fn small_slot_limit() -> Config {
        Config {
            settings: vec![("max_slot_wal_keep_size".into(), "'1MB'".into())],
            ..Config::default()
        }
    }
}

/// A running private PostgreSQL cluster.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    bindir: PathBuf,
    port: u16,
    run_as: Option<String>,
    keep: bool,
    stopped: bool,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Cluster {
    /// Starts a cluster with default settings and the walcast extension created.
    pub fn start() -> Result<Cluster> {
        Self::start_with(Config::default())
    }

    /// Starts a cluster as configured.
    pub fn start_with(config: Config) -> Result<Cluster> {
        let bindir = pg_bindir()?;
        let run_as = if is_root() {
            ensure_os_user()?;
            Some(OS_USER.to_owned())
        } else {
            None
        };
        let mut cluster = Cluster::empty(&config, bindir, run_as)?;
        cluster.chown_dir()?;
        cluster.initdb()?;
        cluster.configure_and_start(&config)?;
        cluster.allow_walcast_plugin()?;
        if config.create_extension {
            cluster.psql("postgres", "CREATE EXTENSION IF NOT EXISTS walcast")?;
        }
        Ok(cluster)
    }

    /// A cluster value with its directory made, not yet initialised.
    fn empty(config: &Config, bindir: PathBuf, run_as: Option<String>) -> Result<Cluster> {
        let dir = match &config.dir {
            Some(d) => d.clone(),
            None => {
                let n = COUNTER.fetch_add(1, Ordering::Relaxed);
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0);
                std::env::temp_dir()
                    .join(format!("walcast-pg-{}-{n}-{nanos:x}", std::process::id()))
            }
        };
        if dir.join("data").join("PG_VERSION").exists() {
            bail!(
                "{} already holds a cluster; stop it or choose another directory",
                dir.display()
            );
        }
        fs::create_dir_all(dir.join("sock"))
            .with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        Ok(Cluster {
            dir,
            bindir,
            port: 0,
            run_as,
            keep: config.keep,
            stopped: true,
        })
    }

    /// Writes the configuration on a free port (or the fixed one) and
    /// starts the server, trying another port when one is taken meanwhile.
    fn configure_and_start(&mut self, config: &Config) -> Result<()> {
        let mut last_err = None;
        for _ in 0..5 {
            self.port = match config.port {
                Some(p) => p,
                None => free_port()?,
            };
            self.write_config(config)?;
            match self.pg_ctl_start() {
                Ok(()) => {
                    last_err = None;
                    break;
                }
                Err(e) if config.port.is_none() => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = last_err {
            return Err(e);
        }
        self.stopped = false;
        self.spawn_watchdog();
        Ok(())
    }

    /// Starts a streaming standby of `primary`, set up as failover slots
    /// need it: a base backup through the physical slot `slot` (created on
    /// the primary), `primary_slot_name`, `hot_standby_feedback`, a
    /// `primary_conninfo` that names a database and, on PostgreSQL 17 and
    /// newer, `sync_replication_slots`. Settings in `config` come after.
    pub fn standby_of(primary: &Cluster, slot: &str, config: Config) -> Result<Cluster> {
        let major: u32 = primary
            .psql(
                "postgres",
                "SELECT current_setting('server_version_num')::int / 10000",
            )?
            .trim()
            .parse()
            .context("server_version_num")?;
        primary.psql(
            "postgres",
            &format!("SELECT pg_create_physical_replication_slot('{slot}', true)"),
        )?;
        let run_as = primary.run_as.clone();
        let mut standby = Cluster::empty(&config, primary.bindir.clone(), run_as)?;
        standby.chown_dir()?;
        let mut backup = standby.as_server_user(&standby.bin("pg_basebackup"));
        backup
            .arg("-D")
            .arg(standby.data())
            .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
            .args(["-U", SUPERUSER, "-X", "stream", "-c", "fast", "--no-sync"])
            .args(["-S", slot]);
        run(&mut backup, "pg_basebackup")?;
        let mut settings = vec![
            (
                "primary_conninfo".to_owned(),
                format!(
                    "'host=127.0.0.1 port={} user={SUPERUSER} dbname=postgres application_name={slot}'",
                    primary.port
                ),
            ),
            ("primary_slot_name".to_owned(), format!("'{slot}'")),
            ("hot_standby_feedback".to_owned(), "on".to_owned()),
        ];
        if major >= 17 {
            settings.push(("sync_replication_slots".to_owned(), "on".to_owned()));
        }
        settings.extend(config.settings.iter().cloned());
        fs::write(standby.data().join("standby.signal"), "").context("standby.signal")?;
        standby.chown_dir()?;
        standby.configure_and_start(&Config { settings, ..config })?;
        Ok(standby)
    }

    /// Promotes a standby and waits until it takes writes.
    pub fn promote(&self) -> Result<()> {
        self.pg_ctl(&["promote", "-w", "-t", "60"])?;
        Ok(())
    }

    /// Kills the server's postmaster with SIGKILL, as a crash of its
    /// machine would end it (its backends exit when they notice).
    pub fn kill(&mut self) -> Result<()> {
        let pid_file = fs::read_to_string(self.data().join("postmaster.pid"))
            .context("reading postmaster.pid")?;
        let pid = pid_file.lines().next().unwrap_or("").trim().to_owned();
        run(Command::new("kill").args(["-KILL", &pid]), "kill")?;
        self.stopped = true;
        Ok(())
    }

    /// Whether the server is in recovery (a standby).
    pub fn in_recovery(&self) -> Result<bool> {
        Ok(self.psql("postgres", "SELECT pg_is_in_recovery()")? == "t")
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory (data in `data/`, socket in `sock/`, log in `server.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A libpq key/value connection string for `db` as the superuser, over TCP.
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={SUPERUSER} dbname={db}",
            self.port
        )
    }

    /// A `postgres://` URL for `db` as the superuser, over TCP.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Path of a PostgreSQL program (`psql`, `pg_recvlogical`, ...).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    /// Environment for libpq programs to reach this cluster.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("PGHOST".into(), "127.0.0.1".into()),
            ("PGPORT".into(), self.port.to_string()),
            ("PGUSER".into(), SUPERUSER.into()),
            ("PGDATABASE".into(), "postgres".into()),
            ("DATABASE_URL".into(), self.url("postgres")),
            ("PG_BINDIR".into(), self.bindir.display().to_string()),
            ("PGDATA".into(), self.data().display().to_string()),
            (
                "WALCAST_PG_SOCKET_DIR".into(),
                self.dir.join("sock").display().to_string(),
            ),
        ]
    }

    /// Writes about 9 MB of WAL in `db` (rows of a table `filler`, made if
    /// missing, and three WAL switches), then a checkpoint: on a cluster of
    /// `Config::small_slot_limit`, every slot nobody reads is invalidated.
    pub fn outrun_slots(&self, db: &str) -> Result<()> {
        self.psql(db, "CREATE TABLE IF NOT EXISTS filler (payload text)")?;
        for _ in 0..3 {
            self.psql(
                db,
                "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 3000)",
            )?;
            self.psql(db, "SELECT pg_switch_wal()")?;
        }
        self.psql(db, "CHECKPOINT")?;
        Ok(())
    }

    /// Runs SQL through `psql` (unaligned, tuples only) and returns its output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let out = Command::new(self.bin("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.conninfo(db),
                "-c",
                sql,
            ])
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!(
                "psql failed for {sql:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    /// Creates a database with the walcast extension and returns its name.
    pub fn create_database(&self, name: &str) -> Result<String> {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        self.psql(name, "CREATE EXTENSION walcast")?;
        Ok(name.to_owned())
    }

    /// Stops the server (fast shutdown).
    pub fn stop(&mut self) -> Result<()> {
        if !self.stopped {
            self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"])?;
            self.stopped = true;
        }
        Ok(())
    }

    /// Restarts the server on the same port (`mode`: smart, fast or immediate).
    pub fn restart(&mut self, mode: &str) -> Result<()> {
        if !self.stopped {
            self.pg_ctl(&["stop", "-m", mode, "-w", "-t", "60"])?;
            self.stopped = true;
        }
        self.pg_ctl_start()?;
        self.stopped = false;
        Ok(())
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn as_server_user(&self, program: &Path) -> Command {
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn chown_dir(&self) -> Result<()> {
        if let Some(user) = &self.run_as {
            run(
                Command::new("chown").args(["-R", user]).arg(&self.dir),
                "chown",
            )?;
        }
        Ok(())
    }

    fn initdb(&self) -> Result<()> {
        let mut c = self.as_server_user(&self.bin("initdb"));
        c.args(["-D"]).arg(self.data()).args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        run(&mut c, "initdb")?;
        Ok(())
    }

    fn write_config(&self, config: &Config) -> Result<()> {
        // One cluster serves a whole test binary, and the slots its tests
        // leave behind stay until it stops: room for all of them.
        let mut conf = format!(
            "\n# walcast private cluster\nlisten_addresses = '127.0.0.1'\nport = {}\n\
             unix_socket_directories = '{}'\nwal_level = logical\nmax_replication_slots = 1024\nmax_wal_senders = 64\n\
             wal_sender_timeout = '10s'\nfsync = off\nfull_page_writes = off\n\
             timezone = 'UTC'\ntrack_commit_timestamp = on\nshared_buffers = '128MB'\nmax_connections = 200\n\
             log_min_messages = warning\nlog_line_prefix = '%m [%p] %q%u@%d '\n",
            self.port,
            self.dir.join("sock").display()
        );
        for (k, v) in &config.settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        let base = self.data().join("postgresql.conf");
        let original = fs::read_to_string(&base).context("reading postgresql.conf")?;
        let original = original
            .split("\n# walcast private cluster\n")
            .next()
            .unwrap_or("")
            .to_owned();
        fs::write(&base, original + &conf).context("writing postgresql.conf")?;
        let hba = "local all all trust\nlocal replication all trust\n\
                   host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n";
        fs::write(self.data().join("pg_hba.conf"), hba).context("writing pg_hba.conf")?;
        Ok(())
    }

    /// Replaces `pg_hba.conf` and reloads (for authentication tests).
    pub fn set_hba(&self, hba: &str) -> Result<()> {
        fs::write(self.data().join("pg_hba.conf"), hba).context("writing pg_hba.conf")?;
        self.psql("postgres", "SELECT pg_reload_conf()")?;
        Ok(())
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<Output> {
        let mut c = self.as_server_user(&self.bin("pg_ctl"));
        c.arg("-D").arg(self.data()).args(args);
        run(&mut c, "pg_ctl")
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let log = self.dir.join("server.log");
        let log_s = log.display().to_string();
        self.pg_ctl(&["start", "-w", "-t", "60", "-l", &log_s])
            .map_err(|e| anyhow!("{e}\nserver log:\n{}", tail(&self.log(), 30)))?;
        Ok(())
    }

    /// Debian's PostgreSQL only loads output plugins named in
    /// `output_plugin_libraries`; stock PostgreSQL has no such setting.
    fn allow_walcast_plugin(&self) -> Result<()> {
        let row = self.psql(
            "postgres",
            "SELECT setting || '|' || context FROM pg_settings WHERE name = 'output_plugin_libraries'",
        )?;
        let Some((setting, context)) = row.split_once('|') else {
            return Ok(());
        };
        let mut items: Vec<String> = setting
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let mut changed = false;
        for want in ["pgoutput", "test_decoding", "walcast", "wal2json"] {
            if !items.iter().any(|i| i == want) {
                items.push(want.to_owned());
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
        let list = items
            .iter()
            .map(|i| format!("'{i}'"))
            .collect::<Vec<_>>()
            .join(", ");
        self.psql(
            "postgres",
            &format!("ALTER SYSTEM SET output_plugin_libraries = {list}"),
        )?;
        if context == "postmaster" {
            self.pg_ctl(&[
                "restart",
                "-w",
                "-t",
                "60",
                "-m",
                "fast",
                "-l",
                &self.dir.join("server.log").display().to_string(),
            ])?;
        } else {
            self.psql("postgres", "SELECT pg_reload_conf()")?;
        }
        Ok(())
    }

    /// Stops the cluster and removes its directory once `pid` has exited,
    /// for clusters that are never dropped.
    fn spawn_watchdog(&self) {
        let pg_ctl = self.bin("pg_ctl");
        let user_prefix = match &self.run_as {
            Some(u) => format!("runuser -u {u} -- "),
            None => String::new(),
        };
        let remove = if self.keep {
            String::new()
        } else {
            format!("rm -rf '{}'", self.dir.display())
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
             {user_prefix}'{pg_ctl}' -D '{data}' -m immediate stop >/dev/null 2>&1; {remove}",
            pid = std::process::id(),
            pg_ctl = pg_ctl.display(),
            data = self.data().display(),
        );
        watchdog(&script);
    }
}

/// Runs `script` in a shell of its own process group, detached from the
/// caller's output, so that it outlives the caller (a watchdog that cleans
/// up after the process that started a server).
pub(crate) fn watchdog(script: &str) {
    let _ = Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "30"]);
        }
        if !self.keep {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn run(c: &mut Command, what: &str) -> Result<Output> {
    let out = c.output().with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn ensure_os_user() -> Result<()> {
    let exists = Command::new("id")
        .arg(OS_USER)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success();
    if !exists {
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                OS_USER,
            ])
            .status()
            .context("running useradd")?;
        // Another process may have created it at the same time.
        let exists = Command::new("id")
            .arg(OS_USER)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success();
        if !status.success() && !exists {
            bail!("could not create the OS user {OS_USER} to run PostgreSQL (it refuses to run as root)");
        }
    }
    Ok(())
}

/// The directory of the PostgreSQL server programs: `$PG_BINDIR`, else the
/// directory `pg_config --bindir` names.
pub fn pg_bindir() -> Result<PathBuf> {
    if let Ok(d) = std::env::var("PG_BINDIR") {
        return Ok(PathBuf::from(d));
    }
    let pg_config = std::env::var("PG_CONFIG").unwrap_or_else(|_| "pg_config".into());
    let out = Command::new(&pg_config)
        .arg("--bindir")
        .output()
        .with_context(|| format!("running {pg_config}: install PostgreSQL or set PG_CONFIG"))?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !dir.join("initdb").exists() {
        bail!(
            "{} has no initdb: install the PostgreSQL server package",
            dir.display()
        );
    }
    Ok(dir)
}

pub(crate) fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}
