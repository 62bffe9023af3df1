//! openraft's storage conformance suite against the segment-file log store and the redb state machine.

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use pond_meta::log_store::LogStore;
use pond_meta::store::StateStore;
use pond_meta::types::TypeConfig;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateStore, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(dir.path()).expect("open log");
        let sm = StateStore::open(dir.path()).expect("open state");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    // The suite logs each step at info: shown when it fails.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    Suite::test_all(Builder).unwrap();
}
