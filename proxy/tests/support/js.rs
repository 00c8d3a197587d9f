//! The TypeScript client (`clients/js`): built with its own locked `tsc`,
//! and `node` able to run it.

use std::path::PathBuf;
use std::process::Command;
use walcast_tests::repo_root;

/// `clients/js`.
pub fn dir() -> PathBuf {
    repo_root().join("clients/js")
}

/// Builds `clients/js/dist` and returns it.
pub fn build() -> PathBuf {
    let dir = dir();
    let tsc = dir.join("node_modules/.bin/tsc");
    assert!(
        tsc.is_file(),
        "{} is missing: run ./scripts/setup.sh (npm ci in clients/js)",
        tsc.display()
    );
    let out = Command::new(&tsc)
        .args(["-p", "."])
        .current_dir(&dir)
        .output()
        .expect("running tsc");
    assert!(
        out.status.success(),
        "tsc failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("dist")
}

/// `node`, with the flag that gives Node.js 20 its global WebSocket (22+
/// has it without one).
pub fn node() -> Command {
    let has_websocket = Command::new("node")
        .args([
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ])
        .status()
        .expect("node is not installed: run ./scripts/setup.sh")
        .success();
    let mut cmd = Command::new("node");
    if !has_websocket {
        cmd.arg("--experimental-websocket");
    }
    cmd
}
