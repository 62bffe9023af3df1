//! Background scrubber: walks every committed chunk of a target at a bounded rate, verifying
//! block CRCs; damaged copies are counted, reported and repaired from another replica.

use crate::limits::*;
use crate::node::{Node, Target};
use crate::store::StoreError;
use pond_proto::ChunkId;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// One pass over `t`, reading at most `bytes_per_sec`. Returns (chunks checked, bad found).
pub async fn scrub_pass(node: &Arc<Node>, t: &Arc<Target>, bytes_per_sec: u64) -> (u64, u64) {
    let (mut checked, mut bad) = (0u64, 0u64);
    let mut from: Bound<ChunkId> = Bound::Unbounded;
    loop {
        let page = t.store.list(from, Bound::Unbounded, 64);
        let Some((last, _)) = page.last() else { break };
        from = Bound::Excluded(*last);
        for (c, info) in page {
            let Some(v) = info.committed else { continue };
            let store = t.store.clone();
            let res =
                crate::node::on_store(&store, move |s| s.read(c, v.version, 0, u32::MAX)).await;
            checked += 1;
            match res {
                Err(StoreError::Checksum { .. }) => {
                    bad += 1;
                    t.corrupt_found.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(target = %t.id, chunk = %c, "scrubber found a corrupt chunk copy; repairing");
                    node.spawn_repair(t.clone(), c);
                }
                // Changed or removed meanwhile: nothing to check.
                Err(StoreError::NoSuchVersion { .. }) => {}
                Err(e) => {
                    tracing::warn!(target = %t.id, chunk = %c, error = %e, "scrub read failed")
                }
                Ok(_) => {}
            }
            // Rate limit: sleep for the time this many bytes are worth.
            let ms = (v.length as u64).saturating_mul(1000) / bytes_per_sec.max(1);
            if ms > 0 {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
    }
    (checked, bad)
}

/// Runs scrub passes forever (until the task is dropped).
pub async fn scrub_loop(node: Arc<Node>, t: Arc<Target>, bytes_per_sec: u64, pause: Duration) {
    loop {
        tokio::time::sleep(pause).await;
        let (checked, bad) = scrub_pass(&node, &t, bytes_per_sec).await;
        tracing::debug!(target = %t.id, checked, bad, "scrub pass done");
    }
}

#[allow(dead_code)]
const _: u64 = SCRUB_BYTES_PER_SEC;
