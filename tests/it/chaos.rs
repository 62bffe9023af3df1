//! `pond chaos` end to end: the quick mode with a fixed seed passes on a correct build, and the
//! checker catches the head acknowledging before the tail commits (`--inject-bug early-ack`).

use std::process::Command;

fn chaos(args: &[&str]) -> (bool, String) {
    let dir = std::env::temp_dir().join("pond-chaos-it");
    let out = Command::new(env!("CARGO_BIN_EXE_pond"))
        .arg("chaos")
        .args(args)
        .arg("--dir")
        .arg(&dir)
        .output()
        .expect("run pond chaos");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    eprintln!("{stdout}");
    (out.status.success(), format!("{stdout}\n{stderr}"))
}

#[test]
fn quick_run_with_fixed_seed_passes() {
    let (ok, out) = chaos(&["--quick", "--seed", "1"]);
    assert!(ok, "pond chaos --quick --seed 1 failed:\n{out}");
    assert!(out.contains("chaos: PASS"), "{out}");
    // Every fault kind of the schedule was injected.
    for kind in [
        "kill9+restart",
        "kill9 meta leader",
        "kill9 two nodes of a chain",
        "SIGSTOP/SIGCONT",
        "corrupt chunk file",
        "fill a target",
    ] {
        assert!(
            out.contains(&format!("] {kind}: ")),
            "no {kind} fault:\n{out}"
        );
    }
}

#[test]
fn early_ack_bug_is_caught() {
    let (ok, out) = chaos(&["--quick", "--seed", "2", "--inject-bug", "early-ack"]);
    assert!(!ok, "the checker missed POND_TEST_BUG=early-ack:\n{out}");
    assert!(out.contains("VIOLATION"), "{out}");
    assert!(
        out.contains("replay with: pond chaos --inject-bug early-ack --quick --seed 2"),
        "{out}"
    );
}
