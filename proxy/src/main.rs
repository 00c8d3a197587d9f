//! `walcast-proxy`: serves websocket change streams (see `--help`).

use clap::Parser;
use walcast_proxy::app;
use walcast_proxy::config::{Cli, Command};

/// One malloc arena keeps the change log's memory bounded: with glibc's
/// per-thread arenas, changes allocated by the reader and freed by other
/// threads left the process 50% above the log's size (docs/benchmarks.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn one_malloc_arena() {
    // SAFETY: mallopt only changes the allocator's settings; it runs before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}

fn main() {
    one_malloc_arena();
    let _ = dotenvy::dotenv();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => fail(&format!("cannot start the runtime: {e}")),
    };
    let result = match cli.command {
        None | Some(Command::Serve) => runtime.block_on(app::serve(cli.serve)),
        Some(Command::Relay) => runtime.block_on(app::relay(cli.serve)),
        Some(Command::Doctor) => match runtime.block_on(app::doctor(cli.serve)) {
            Ok((report, ok)) => {
                print!("{report}");
                std::process::exit(if ok { 0 } else { 1 })
            }
            Err(e) => Err(e),
        },
        Some(Command::Health) => {
            let probe = walcast_proxy::probe::check(&cli.serve.listen);
            println!("{}", probe.report);
            std::process::exit(if probe.healthy { 0 } else { 1 })
        }
    };
    if let Err(e) = result {
        fail(&e.to_string());
    }
}

/// Exit status 2 with the reason.
fn fail(why: &str) -> ! {
    eprintln!("walcast-proxy: {why}");
    std::process::exit(2)
}
