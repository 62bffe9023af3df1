//! Heartbeats to the metadata service: report each target's local state and space, receive
//! newer routing tables and GC tasks. The first heartbeat registers the node and its targets.

use crate::limits::*;
use crate::node::Node;
use pond_proto::cluster::{Heartbeat, TargetReport};
use pond_proto::meta::{ClusterReply, ClusterRequest};
use pond_proto::rpc::TOKEN_HEADER;
use pond_proto::rpc::meta_service::meta_client::MetaClient;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

/// A tiny failover client over the generated one: tries each meta address in turn.
pub struct MetaLink {
    addrs: Vec<String>,
    token: String,
    current: usize,
    client: Option<MetaClient<Channel>>,
}

impl MetaLink {
    pub fn new(addrs: Vec<String>, token: String) -> MetaLink {
        MetaLink {
            addrs,
            token,
            current: 0,
            client: None,
        }
    }

    async fn connect(&mut self) -> anyhow::Result<&mut MetaClient<Channel>> {
        if self.client.is_none() {
            let addr = &self.addrs[self.current % self.addrs.len()];
            let url = if addr.starts_with("http") {
                addr.clone()
            } else {
                format!("http://{addr}")
            };
            let ch = Endpoint::from_shared(url)?
                .connect_timeout(Duration::from_millis(HEARTBEAT_DEADLINE_MS))
                .timeout(Duration::from_millis(HEARTBEAT_DEADLINE_MS))
                .connect()
                .await?;
            self.client = Some(MetaClient::new(ch));
        }
        Ok(self.client.as_mut().expect("just connected"))
    }

    /// One cluster request; on failure moves to the next meta address for the next call.
    pub async fn cluster(&mut self, req: ClusterRequest) -> anyhow::Result<ClusterReply> {
        if self.addrs.is_empty() {
            anyhow::bail!("no meta addresses configured");
        }
        let token = self.token.parse()?;
        let res = async {
            let c = self.connect().await?;
            let mut r = tonic::Request::new(req);
            r.metadata_mut().insert(TOKEN_HEADER, token);
            r.set_timeout(Duration::from_millis(HEARTBEAT_DEADLINE_MS));
            let reply = c
                .cluster(r)
                .await
                .map_err(|s| pond_proto::error::from_status(&s))?;
            Ok::<_, anyhow::Error>(reply.into_inner())
        }
        .await;
        if res.is_err() {
            self.client = None;
            self.current += 1;
        }
        res
    }
}

pub fn heartbeat_of(
    node: &Node,
    data_addr: &str,
    gc_done: Vec<pond_proto::cluster::GcTask>,
) -> Heartbeat {
    Heartbeat {
        node: node.id,
        data_addr: data_addr.to_string(),
        targets: node
            .targets()
            .map(|t| {
                let space = t.store.space();
                TargetReport {
                    id: t.id,
                    local_state: t.local_state(),
                    used_bytes: space.used_bytes,
                    capacity_bytes: space.capacity_bytes,
                }
            })
            .collect(),
        routing_version: node.routing().version,
        gc_done,
    }
}

pub async fn heartbeat_loop(
    node: Arc<Node>,
    mut link: MetaLink,
    data_addr: String,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    node.arm_lease();
    loop {
        let gc_done = node.take_gc_done();
        let hb = heartbeat_of(&node, &data_addr, gc_done.clone());
        let sent = std::time::Instant::now();
        match link.cluster(ClusterRequest::Heartbeat(hb)).await {
            Ok(ClusterReply::Heartbeat(reply)) => {
                if failures > 0 {
                    tracing::info!("heartbeats to meta restored");
                }
                failures = 0;
                if let Some(r) = reply.routing {
                    node.set_routing(r);
                }
                // The routing is now as fresh as this heartbeat: serve again (or on).
                node.renew_lease(sent);
                node.accept_gc(reply.gc);
            }
            Ok(other) => {
                tracing::warn!(?other, "unexpected heartbeat reply");
            }
            Err(e) => {
                // Report the finished GC tasks again next time.
                node.requeue_gc_done(gc_done);
                failures += 1;
                if failures == 3 {
                    tracing::warn!(error = %e, "heartbeats to meta failing");
                } else {
                    tracing::debug!(error = %e, "heartbeat failed");
                }
            }
        }
        tokio::select! {
            _ = crate::stopped(&mut stop) => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
