//! With the `duckdb` feature the `pond` binary and the integration tests load libduckdb.so at
//! run time: record its directory as an rpath so that no LD_LIBRARY_PATH is needed.
fn main() {
    println!("cargo:rerun-if-env-changed=DUCKDB_LIB_DIR");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_DUCKDB").is_none() {
        return;
    }
    if let Ok(dir) = std::env::var("DUCKDB_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
