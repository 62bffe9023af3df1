//! Says loudly when the executor is built without DuckDB or without `DUCKDB_LIB_DIR`.
fn main() {
    println!("cargo:rerun-if-env-changed=DUCKDB_LIB_DIR");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_DUCKDB").is_none() {
        println!(
            "cargo:warning=pond-compute built WITHOUT DuckDB: the near-data executor is disabled. \
             Run compute/fetch-duckdb.sh and build with --features pond-compute/duckdb and \
             DUCKDB_LIB_DIR set (docs/compute.md)."
        );
        return;
    }
    match std::env::var("DUCKDB_LIB_DIR") {
        Ok(_) => {}
        Err(_) => println!(
            "cargo:warning=pond-compute: DUCKDB_LIB_DIR is not set; linking DuckDB will fail \
             unless libduckdb.so is on the system library path (docs/compute.md)"
        ),
    }
}
