//! The TypeScript client (`clients/js`): built with its own locked `tsc`,
//! and `node` able to run it.

use std::path::PathBuf;
use std::process::Command;
use walcast_tests::repo_root;

/// `clients/js`.
pub fn dir() -> PathBuf {
    repo_root().join("clients/js")
}

/// Builds `clients/js/src` into a temporary directory and checks that the
/// committed `clients/js/dist` is that build (the proxy serves it, and the
/// node tests import it); returns `clients/js/dist`. Once per test binary.
pub fn build() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_and_compare).clone()
}

fn build_and_compare() -> PathBuf {
    let dir = dir();
    let tsc = dir.join("node_modules/.bin/tsc");
    assert!(
        tsc.is_file(),
        "{} is missing: run ./scripts/setup.sh (npm ci in clients/js)",
        tsc.display()
    );
    let out_dir = std::env::temp_dir().join(format!("walcast-js-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let out = Command::new(&tsc)
        .args(["-p", ".", "--outDir"])
        .arg(&out_dir)
        .current_dir(&dir)
        .output()
        .expect("running tsc");
    assert!(
        out.status.success(),
        "tsc failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dist = dir.join("dist");
    let names = |d: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .map(|it| {
                it.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let built = names(&out_dir);
    assert!(
        !built.is_empty(),
        "tsc wrote nothing into {}",
        out_dir.display()
    );
    assert_eq!(
        names(&dist),
        built,
        "clients/js/dist does not hold the files the build makes: run `npm run build` in clients/js and commit dist/"
    );
    for name in &built {
        let fresh = std::fs::read(out_dir.join(name)).expect("reading the build");
        let committed = std::fs::read(dist.join(name)).expect("reading clients/js/dist");
        assert!(
            fresh == committed,
            "clients/js/dist/{name} is not the build of clients/js/src: run `npm run build` in clients/js and commit dist/"
        );
    }
    let _ = std::fs::remove_dir_all(&out_dir);
    dist
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
