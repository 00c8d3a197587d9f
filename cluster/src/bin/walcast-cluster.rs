//! `walcast-cluster`: run a command next to a private PostgreSQL cluster.
//!
//! ```text
//! walcast-cluster run [--port N] [--dir DIR] [--keep] [--set name=value]... -- COMMAND [ARGS...]
//! ```
//!
//! Starts a cluster (walcast extension created in `postgres`), runs COMMAND
//! with PGHOST, PGPORT, PGUSER, PGDATABASE, DATABASE_URL and PG_BINDIR set,
//! then stops the cluster and exits with COMMAND's status.

use anyhow::{bail, Context, Result};
use std::process::Command;
use walcast_cluster::{Cluster, Config};

const USAGE: &str =
    "usage: walcast-cluster run [--port N] [--keep] [--set name=value]... -- COMMAND [ARGS...]";

fn main() {
    match real_main() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("walcast-cluster: {e:#}");
            std::process::exit(2);
        }
    }
}

fn real_main() -> Result<i32> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("run") => {}
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return Ok(0);
        }
        _ => bail!("{USAGE}"),
    }
    let mut config = Config::default();
    let mut command: Vec<String> = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => {
                let p = args.next().context("--port needs a number")?;
                config.port = Some(
                    p.parse()
                        .with_context(|| format!("--port {p:?} is not a port number"))?,
                );
            }
            "--keep" => config.keep = true,
            "--dir" => config.dir = Some(args.next().context("--dir needs a directory")?.into()),
            "--set" => {
                let kv = args.next().context("--set needs name=value")?;
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--set {kv:?}: expected name=value"))?;
                config.settings.push((k.to_owned(), v.to_owned()));
            }
            "--" => {
                command.extend(args.by_ref());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if command.is_empty() {
        bail!("no command given\n{USAGE}");
    }
    let mut cluster = Cluster::start_with(config)?;
    eprintln!(
        "walcast-cluster: PostgreSQL on 127.0.0.1:{} (data in {})",
        cluster.port(),
        cluster.dir().display()
    );
    let status = Command::new(&command[0])
        .args(&command[1..])
        .envs(cluster.env())
        .status()
        .with_context(|| format!("running {:?}", command[0]))?;
    cluster.stop()?;
    Ok(status.code().unwrap_or(1))
}
