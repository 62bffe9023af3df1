//! The `pond` command line against a real cluster: status JSON keys, unreachable cluster,
//! shell tools with coreutils-style exit codes, and `pond up` restart keeping every byte.

use pond_tests::{Cluster, Opts, Role};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_pond");

fn pond(cluster: &Cluster, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--cluster")
        .arg(cluster.cluster_file_path())
        .args(args)
        .output()
        .expect("run pond")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "pond failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn status_json_keys_tools_and_restart_keep_bytes() {
    let mut cluster = Cluster::start(
        BIN,
        Opts {
            meta: 3,
            storage: 3,
            targets_per_node: 2,
            replicas: 3,
        },
    )
    .expect("start cluster");

    let v: serde_json::Value =
        serde_json::from_str(&ok(&pond(&cluster, &["status", "--json"]))).expect("status JSON");
    let meta = v["meta"].as_array().expect("meta array");
    assert_eq!(meta.len(), 3);
    assert_eq!(meta.iter().filter(|m| m["role"] == "leader").count(), 1);
    for m in meta {
        for k in ["id", "addr", "role", "pid"] {
            assert!(m.get(k).is_some(), "meta entry lacks {k}: {m}");
        }
        assert!(
            m["pid"].is_u64(),
            "pond up started it, so pid is known: {m}"
        );
    }
    assert!(
        meta.iter().all(|m| m["last_applied"].is_u64()),
        "every member answered for itself: {meta:?}"
    );
    // A killed follower is shown down (it stays a member), the others as before.
    let follower = meta
        .iter()
        .find(|m| m["role"] == "follower")
        .and_then(|m| m["id"].as_u64())
        .expect("a follower");
    cluster.kill9(Role::Meta(follower)).unwrap();
    let v2: serde_json::Value =
        serde_json::from_str(&ok(&pond(&cluster, &["status", "--json"]))).expect("status JSON");
    let meta2 = v2["meta"].as_array().expect("meta array");
    for m in meta2 {
        let dead = m["id"].as_u64() == Some(follower);
        assert_eq!(m["role"] == "down", dead, "{m}");
        assert_eq!(m["last_applied"].is_null(), dead, "{m}");
    }
    let table = ok(&pond(&cluster, &["status"]));
    assert!(table.contains("DOWN"), "{table}");
    cluster.restart(Role::Meta(follower)).unwrap();
    let storage = v["storage"].as_array().expect("storage array");
    assert_eq!(storage.len(), 3);
    for s in storage {
        for k in ["id", "addr", "pid", "targets"] {
            assert!(s.get(k).is_some(), "storage entry lacks {k}: {s}");
        }
        let targets = s["targets"].as_array().unwrap();
        assert_eq!(targets.len(), 2);
        for t in targets {
            for k in [
                "id",
                "chain",
                "public_state",
                "local_state",
                "used_bytes",
                "capacity_bytes",
            ] {
                assert!(t.get(k).is_some(), "target lacks {k}: {t}");
            }
            assert_eq!(t["public_state"], "serving");
        }
    }
    let chains = v["chains"].as_array().expect("chains array");
    assert_eq!(chains.len(), 2);
    for c in chains {
        assert!(c["version"].is_u64());
        let ts = c["targets"].as_array().unwrap();
        assert_eq!(ts.len(), 3);
        // Replicas of one chain sit on distinct nodes (target id = node * 1000 + k).
        let mut nodes: Vec<u64> = ts.iter().map(|t| t.as_u64().unwrap() / 1000).collect();
        nodes.sort();
        nodes.dedup();
        assert_eq!(nodes.len(), 3, "chain {c} has two replicas on one node");
    }

    // Shell tools.
    let local = cluster.path().join("local.bin");
    let data: Vec<u8> = (0..(5 << 20) + 123)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&local, &data).unwrap();
    ok(&pond(&cluster, &["mkdir", "-p", "/x/y"]));
    ok(&pond(
        &cluster,
        &["put", local.to_str().unwrap(), "/x/y/data.bin"],
    ));
    let ls = ok(&pond(&cluster, &["ls", "-l", "/x/y"]));
    assert!(
        ls.contains("data.bin") && ls.contains(&data.len().to_string()),
        "{ls}"
    );
    let back = cluster.path().join("back.bin");
    ok(&pond(
        &cluster,
        &["get", "/x/y/data.bin", back.to_str().unwrap()],
    ));
    assert_eq!(std::fs::read(&back).unwrap(), data);
    let cat = pond(&cluster, &["cat", "/x/nope"]);
    assert_eq!(cat.status.code(), Some(1));
    let err = String::from_utf8_lossy(&cat.stderr);
    assert!(
        err.contains("'/x/nope': No such file or directory"),
        "{err}"
    );
    let rm = pond(&cluster, &["rm", "/x"]);
    assert_eq!(rm.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&rm.stderr).contains("Is a directory"));
    let mkdir = pond(&cluster, &["mkdir", "/x"]);
    assert_eq!(mkdir.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&mkdir.stderr).contains("File exists"));

    // Restart: every byte survives `pond down` + `pond up` on the same directory.
    cluster.down().unwrap();
    let down = pond(&cluster, &["status"]);
    assert_eq!(
        down.status.code(),
        Some(2),
        "status of a stopped cluster must fail"
    );
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot reach the cluster"));
    cluster.up_again().unwrap();
    let back2 = cluster.path().join("back2.bin");
    ok(&pond(
        &cluster,
        &["get", "/x/y/data.bin", back2.to_str().unwrap()],
    ));
    assert_eq!(
        std::fs::read(&back2).unwrap(),
        data,
        "bytes changed across a restart"
    );
}
