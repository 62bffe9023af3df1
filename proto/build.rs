//! Generates the tonic control-plane services from Rust types (postcard codec), so building
//! pond needs no `protoc`.

fn main() {
    let codec = "crate::rpc::PostcardCodec";
    let method = |name: &str, route: &str, input: &str, output: &str| {
        tonic_build::manual::Method::builder()
            .name(name)
            .route_name(route)
            .input_type(input)
            .output_type(output)
            .codec_path(codec)
            .build()
    };
    let meta = tonic_build::manual::Service::builder()
        .name("Meta")
        .package("pond")
        .method(method(
            "op",
            "Op",
            "crate::meta::MetaRequest",
            "crate::meta::MetaReply",
        ))
        .method(method(
            "cluster",
            "Cluster",
            "crate::meta::ClusterRequest",
            "crate::meta::ClusterReply",
        ))
        .method(method(
            "raft_append",
            "RaftAppend",
            "crate::meta::RaftMessage",
            "crate::meta::RaftMessage",
        ))
        .method(method(
            "raft_vote",
            "RaftVote",
            "crate::meta::RaftMessage",
            "crate::meta::RaftMessage",
        ))
        .method(method(
            "raft_snapshot",
            "RaftSnapshot",
            "crate::meta::RaftMessage",
            "crate::meta::RaftMessage",
        ))
        .build();
    tonic_build::manual::Builder::new().compile(&[meta]);
}
