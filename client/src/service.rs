//! The seam between the file API and the metadata service: `MetaClient` (leader failover,
//! retry budget) in production, an in-memory fake in unit tests.

use futures::future::BoxFuture;
use pond_proto::meta::{ClusterReply, ClusterRequest, InodeAttr, MetaReply, MetaRequest};
use pond_proto::{ErrorCode, PondError};

pub trait MetaService: Send + Sync + 'static {
    fn op(&self, req: MetaRequest) -> BoxFuture<'_, Result<MetaReply, PondError>>;
    fn cluster(&self, req: ClusterRequest) -> BoxFuture<'_, Result<ClusterReply, PondError>>;
}

pub(crate) fn unexpected(what: &str, reply: &MetaReply) -> PondError {
    PondError::new(
        ErrorCode::Malformed,
        format!("meta answered {what} with {reply:?}"),
    )
}

pub(crate) fn expect_attr(what: &str, reply: MetaReply) -> Result<InodeAttr, PondError> {
    match reply {
        MetaReply::Attr(a) => Ok(a),
        other => Err(unexpected(what, &other)),
    }
}

pub(crate) fn expect_done(what: &str, reply: MetaReply) -> Result<(), PondError> {
    match reply {
        MetaReply::Done | MetaReply::Attr(_) => Ok(()),
        other => Err(unexpected(what, &other)),
    }
}

impl MetaService for crate::meta_client::MetaClient {
    fn op(&self, req: MetaRequest) -> BoxFuture<'_, Result<MetaReply, PondError>> {
        Box::pin(crate::meta_client::MetaClient::op(self, req))
    }

    fn cluster(&self, req: ClusterRequest) -> BoxFuture<'_, Result<ClusterReply, PondError>> {
        Box::pin(crate::meta_client::MetaClient::cluster(self, req))
    }
}
