//! Manual mount for development until `pond mount` is wired:
//! `cargo run -p pond-fuse --example mount -- CLUSTER_FILE MOUNTPOINT`. Unmounts on SIGTERM/SIGINT.

use pond_client::Client;
use pond_fuse::MountOptions;
use std::path::PathBuf;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let (Some(cf), Some(mp)) = (args.next(), args.next()) else {
        eprintln!("usage: mount CLUSTER_FILE MOUNTPOINT");
        std::process::exit(2);
    };
    let client = Client::from_cluster_file(&PathBuf::from(cf)).await?;
    pond_fuse::serve(client, &PathBuf::from(mp), MountOptions::default()).await?;
    Ok(())
}
