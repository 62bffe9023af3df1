//! With the `duckdb` feature: makes sure the prebuilt `libduckdb.so` is in `DUCKDB_LIB_DIR`
//! (set by `.cargo/config.toml` to `target/duckdb` unless exported), fetching it with
//! `fetch-duckdb.sh` (npm) when it is missing, so that a fresh clone builds with one command.
//! Without the feature it says loudly that the executor is disabled.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=DUCKDB_LIB_DIR");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=fetch-duckdb.sh");
    if std::env::var_os("CARGO_FEATURE_DUCKDB").is_none() {
        println!(
            "cargo:warning=pond-compute built WITHOUT DuckDB: the near-data executor is disabled. \
             Build with the root feature `duckdb` (default) or --features pond-compute/duckdb \
             (docs/compute.md)."
        );
        return;
    }
    let Some(dir) = std::env::var_os("DUCKDB_LIB_DIR").map(PathBuf::from) else {
        println!(
            "cargo:warning=pond-compute: DUCKDB_LIB_DIR is not set; linking DuckDB will fail \
             unless libduckdb.so is on the system library path (docs/compute.md)"
        );
        return;
    };
    if !dir.join("libduckdb.so").exists() {
        fetch(&dir);
    }
    println!("cargo:rustc-link-search=native={}", dir.display());
}

fn fetch(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fetch-duckdb.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg(dir)
        .status();
    match status {
        Ok(s) if s.success() && dir.join("libduckdb.so").exists() => {}
        other => panic!(
            "pond-compute: libduckdb.so is not in {} and `bash {} {}` failed ({other:?}). \
             It needs npm (apt-get install npm). Or build without DuckDB: \
             cargo build --no-default-features (docs/compute.md)",
            dir.display(),
            script.display(),
            dir.display()
        ),
    }
}
