//! Raft transport: openraft messages, postcard-encoded inside `RaftMessage`, over the
//! `pond.Meta` tonic service, each call with a deadline and the cluster token.

use crate::limits::*;
use crate::types::{PeerNode, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use pond_proto::meta::RaftMessage;
use pond_proto::rpc::TOKEN_HEADER;
use pond_proto::rpc::meta_service::meta_client::MetaClient;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Creates Raft clients. Channels are cached per address: openraft asks for a new client for
/// every read-index round (one per follower), and a fresh channel would mean a new TCP and
/// HTTP/2 handshake each time.
#[derive(Clone)]
pub struct Network {
    pub token: String,
    channels: Arc<parking_lot::Mutex<HashMap<String, Channel>>>,
}

impl Network {
    pub fn new(token: String) -> Network {
        Network {
            token,
            channels: Arc::default(),
        }
    }

    fn channel_to(&self, addr: &str) -> Option<Channel> {
        let mut m = self.channels.lock();
        if let Some(c) = m.get(addr) {
            return Some(c.clone());
        }
        let c = channel(addr).ok()?;
        m.insert(addr.to_string(), c.clone());
        Some(c)
    }
}

pub struct PeerClient {
    target: u64,
    client: Option<MetaClient<Channel>>,
    addr: String,
    token: String,
}

/// Lazily connecting channel to a peer's gRPC address.
pub fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect_lazy())
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> PeerClient {
        let client = self.channel_to(&node.addr).map(|ch| {
            MetaClient::new(ch)
                .max_decoding_message_size(pond_proto::limits::CONTROL_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(pond_proto::limits::CONTROL_MESSAGE_BYTES_MAX)
        });
        PeerClient {
            target,
            client,
            addr: node.addr.clone(),
            token: self.token.clone(),
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Append,
    Vote,
    Snapshot,
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: Kind,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<u64, PeerNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            let e = std::io::Error::other(format!("bad peer address {:?}", self.addr));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        };
        let payload =
            postcard::to_stdvec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut r = tonic::Request::new(RaftMessage { payload });
        r.set_timeout(timeout);
        if let Ok(v) = self.token.parse() {
            r.metadata_mut().insert(TOKEN_HEADER, v);
        }
        let fut = async {
            match kind {
                Kind::Append => client.raft_append(r).await,
                Kind::Vote => client.raft_vote(r).await,
                Kind::Snapshot => client.raft_snapshot(r).await,
            }
        };
        // The tonic deadline covers the server; this one also covers connecting.
        let resp = match tokio::time::timeout(timeout, fut).await {
            Err(_) => {
                let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "raft rpc deadline");
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
            Ok(Err(status)) => {
                return Err(match status.code() {
                    tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled => RPCError::Unreachable(Unreachable::new(&status)),
                    _ => RPCError::Network(NetworkError::new(&status)),
                });
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let res: Result<Resp, E> = postcard::from_bytes(&resp.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, PeerNode, RaftError<u64>>> {
        let t = option.hard_ttl().min(RAFT_RPC_TIMEOUT);
        self.call(Kind::Append, &rpc, t).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, PeerNode, RaftError<u64, InstallSnapshotError>>,
    > {
        let t = option
            .hard_ttl()
            .max(RAFT_RPC_TIMEOUT)
            .min(RAFT_SNAPSHOT_RPC_TIMEOUT);
        self.call(Kind::Snapshot, &rpc, t).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, PeerNode, RaftError<u64>>> {
        let t = option.hard_ttl().min(RAFT_RPC_TIMEOUT);
        self.call(Kind::Vote, &rpc, t).await
    }
}
