//! `walcast-like`: what `like` patterns cost per change, against the floor
//! of one substring scan of the same value.
//!
//! For hostile patterns (those that made a backtracking matcher quadratic)
//! and values of growing size, prints the time to match once, per character
//! of the value, and as a multiple of `memmem` looking for an absent needle
//! in the same value. Linear matching shows as a flat time per character.

use std::hint::black_box;
use std::time::{Duration, Instant};
use walcast_proxy::query::like::Like;

/// The fastest of `runs` timings of `f`.
fn best(runs: usize, mut f: impl FnMut() -> bool) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            black_box(f());
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    let patterns = [
        ("literal piece, no match", format!("%{}b%", "a".repeat(100))),
        ("literal piece at the end", format!("%{}b", "a".repeat(100))),
        ("many %", format!("%{}b", "a%".repeat(50))),
        ("_ piece, 101 chars", format!("%{}b%", "a_".repeat(50))),
        ("_ piece, 401 chars", format!("%{}b%", "a_".repeat(200))),
        ("ilike, _ piece", format!("%{}B%", "A_".repeat(50))),
    ];
    println!("| pattern | value chars | match (ms) | ns per char | x memmem floor |");
    println!("|---|---|---|---|---|");
    for (name, pattern) in &patterns {
        let fold = name.starts_with("ilike");
        let like = Like::new(pattern, fold);
        for n in [10_000usize, 100_000, 1_000_000] {
            let value = "a".repeat(n);
            let runs = (10_000_000 / n).clamp(3, 200);
            let t = best(runs, || like.matches(&value));
            let floor = best(runs, || {
                memchr::memmem::find(value.as_bytes(), b"needle-not-there").is_some()
            });
            println!(
                "| {name} | {n} | {:.3} | {:.2} | {:.1} |",
                t.as_secs_f64() * 1e3,
                t.as_secs_f64() * 1e9 / n as f64,
                t.as_secs_f64() / floor.as_secs_f64().max(1e-9)
            );
        }
    }
}
