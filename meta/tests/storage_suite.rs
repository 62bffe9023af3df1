//! openraft's storage conformance suite against the redb log store and state machine.

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use pond_meta::log_store::LogStore;
use pond_meta::store::StateStore;
use pond_meta::types::TypeConfig;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateStore, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(&dir.path().join("log.redb")).expect("open log");
        let sm = StateStore::open(dir.path()).expect("open state");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}
