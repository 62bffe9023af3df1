//! Replays the checked-in fuzz corpus (and every crash artifact kept as a regression input)
//! through the harnesses on stable, so `./test.sh` re-checks what the fuzzer once found.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cargo-fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn every_target_has_a_seed_corpus_and_replays_it() {
    for (name, f) in pond_fuzz::TARGETS {
        let corpus = inputs(&root().join("corpus").join(name));
        assert!(
            corpus.len() >= 4,
            "{name}: only {} corpus inputs checked in (run `cargo run -p pond-fuzz --example seed-corpus`)",
            corpus.len()
        );
        let mut regress = inputs(&root().join("regressions").join(name));
        regress.extend(corpus);
        for p in regress {
            let bytes = std::fs::read(&p).expect("read corpus input");
            f(&bytes);
        }
    }
}

#[test]
fn every_cargo_fuzz_target_names_a_harness() {
    let dir = root().join("fuzz_targets");
    let names: Vec<String> = inputs(&dir)
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for (name, _) in pond_fuzz::TARGETS {
        assert!(names.iter().any(|n| n == name), "no fuzz_targets/{name}.rs");
    }
    for n in &names {
        assert!(
            pond_fuzz::target(n).is_some(),
            "fuzz_targets/{n}.rs has no harness"
        );
    }
}
