//! `pond admin`: operations for hand-made deployments.

use anyhow::{Result, bail};
use pond_client::meta_client::MetaClient;
use pond_proto::meta::{ClusterReply, ClusterRequest};
use std::path::Path;

#[derive(clap::Subcommand)]
pub enum AdminCmd {
    /// Build chains from the registered targets (replicas on distinct nodes) and a chain table.
    BootstrapChains {
        #[arg(long, default_value_t = 3)]
        replicas: u32,
    },
}

pub fn admin(cluster: Option<&Path>, cmd: AdminCmd) -> Result<()> {
    let cf = super::load_cluster(cluster)?;
    super::runtime()?.block_on(async {
        let client = MetaClient::connect(cf.meta_addrs(), cf.token.clone())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        match cmd {
            AdminCmd::BootstrapChains { replicas } => {
                match client
                    .cluster(ClusterRequest::BootstrapChains { replicas })
                    .await
                {
                    Ok(ClusterReply::Bootstrapped(t)) => {
                        println!(
                            "chain table {}: chains {:?}",
                            t.id.0,
                            t.chains.iter().map(|c| c.0).collect::<Vec<_>>()
                        );
                        Ok(())
                    }
                    Ok(other) => bail!("unexpected reply: {other:?}"),
                    Err(e) => bail!("bootstrap chains: {e}"),
                }
            }
        }
    })
}
