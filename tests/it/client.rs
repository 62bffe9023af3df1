//! The client library against real `pond` processes: whole files of many sizes, namespace
//! operations and their errors, random positional I/O against a byte model, put/get, batched
//! I/O, the blocking wrapper, two clients, and a storage node killed in the middle of a write.

use pond_client::batch::{self, Op, Output, Request};
use pond_client::blocking::BlockingClient;
use pond_client::{Client, OpenMode, OpenOptions};
use pond_proto::ErrorCode;
use pond_proto::meta::{FileType, RenameMode};
use pond_tests::{Cluster, Opts, Role};
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_pond");

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| r.random()).collect()
}

fn small() -> Opts {
    Opts {
        meta: 1,
        storage: 3,
        targets_per_node: 2,
        replicas: 3,
    }
}

async fn client(c: &Cluster) -> Client {
    Client::from_cluster_file(&c.cluster_file_path())
        .await
        .expect("connect client")
}

fn code<T: std::fmt::Debug>(r: pond_client::Result<T>) -> ErrorCode {
    r.expect_err("expected an error").code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_many_sizes_roundtrip_with_exact_lengths() {
    let cluster = Cluster::start(BIN, small()).expect("start cluster");
    let c = client(&cluster).await;
    for (k, len) in [0usize, 1, 4095, 4 << 20, (4 << 20) + 1, 21 << 20]
        .into_iter()
        .enumerate()
    {
        let path = format!("/f{k}");
        let data = pattern(k as u64, len);
        c.write_file(&path, &data).await.unwrap();
        assert_eq!(
            c.stat(&path).await.unwrap().size,
            len as u64,
            "{path}: size after close"
        );
        assert!(c.read_file(&path).await.unwrap() == data, "{path}: bytes");
    }
    // A second client (another process would do the same) sees the same bytes.
    let c2 = client(&cluster).await;
    assert_eq!(c2.read_file("/f5").await.unwrap(), pattern(5, 21 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_operations_and_errors() {
    let cluster = Cluster::start(BIN, small()).expect("start cluster");
    let c = client(&cluster).await;
    c.mkdir_all("/a/b/c", 0o755).await.unwrap();
    c.mkdir_all("/a/b/c", 0o755).await.unwrap();
    assert_eq!(code(c.mkdir_path("/a/b", 0o755).await), ErrorCode::Exists);
    c.write_file("/a/b/c/x", b"hello").await.unwrap();
    assert_eq!(code(c.rmdir_path("/a/b/c").await), ErrorCode::NotEmpty);
    assert_eq!(code(c.stat("/a/nope").await), ErrorCode::NotFound);
    assert_eq!(
        code(c.open("/a/b", OpenOptions::write()).await),
        ErrorCode::IsDir
    );
    assert_eq!(code(c.stat("/a/b/c/x/y").await), ErrorCode::NotDir);
    let excl = OpenOptions {
        exclusive: true,
        ..OpenOptions::write()
    };
    assert_eq!(code(c.open("/a/b/c/x", excl).await), ErrorCode::Exists);
    // Hard links share the inode and count links.
    let l = c.link_path("/a/b/c/x", "/a/y").await.unwrap();
    assert_eq!(l.nlink, 2);
    assert_eq!(c.read_file("/a/y").await.unwrap(), b"hello");
    c.symlink_path("/a/b/c/x", "/a/s").await.unwrap();
    assert_eq!(c.readlink_path("/a/s").await.unwrap(), "/a/b/c/x");
    assert_eq!(c.lstat("/a/s").await.unwrap().kind, FileType::Symlink);
    assert_eq!(c.stat("/a/s").await.unwrap().size, 5);
    // Rename: replace, no-replace, exchange.
    c.write_file("/a/z", b"zz").await.unwrap();
    assert_eq!(
        code(c.rename_path("/a/z", "/a/y", RenameMode::NoReplace).await),
        ErrorCode::Exists
    );
    c.rename_path("/a/z", "/a/y", RenameMode::Exchange)
        .await
        .unwrap();
    assert_eq!(c.read_file("/a/y").await.unwrap(), b"zz");
    assert_eq!(c.read_file("/a/z").await.unwrap(), b"hello");
    c.rename_path("/a/z", "/a/y", RenameMode::Replace)
        .await
        .unwrap();
    assert_eq!(code(c.stat("/a/z").await), ErrorCode::NotFound);
    assert_eq!(c.stat("/a/b/c/x").await.unwrap().nlink, 2);
    c.unlink_path("/a/y").await.unwrap();
    assert_eq!(c.stat("/a/b/c/x").await.unwrap().nlink, 1);
    let names: Vec<String> = c
        .read_dir_all("/a")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec!["b", "s"]);
    let mut walked = Vec::new();
    c.walk("/a", |p, a| walked.push((p.to_string(), a.kind)))
        .await
        .unwrap();
    walked.sort_by(|x, y| x.0.cmp(&y.0));
    let want = [
        ("/a/b", FileType::Dir),
        ("/a/b/c", FileType::Dir),
        ("/a/b/c/x", FileType::File),
        ("/a/s", FileType::Symlink),
    ];
    assert_eq!(walked, want.map(|(p, k)| (p.to_string(), k)).to_vec());
    // Many entries, listed in pages.
    c.mkdir_path("/many", 0o755).await.unwrap();
    let dir = c.stat("/many").await.unwrap().inode;
    for k in 0..2100 {
        c.create(dir, &format!("e{k:05}"), 0o644, c.caller(), true)
            .await
            .unwrap();
    }
    assert_eq!(c.read_dir_all("/many").await.unwrap().len(), 2100);
    c.remove_tree("/many").await.unwrap();
    assert_eq!(code(c.stat("/many").await), ErrorCode::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_positional_io_matches_a_byte_model() {
    let cluster = Cluster::start(BIN, small()).expect("start cluster");
    let c = client(&cluster).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let rw = OpenOptions {
        mode: OpenMode::READ_WRITE,
        ..OpenOptions::write()
    };
    let f = c.open("/model", rw).await.unwrap();
    let mut model: Vec<u8> = Vec::new();
    for step in 0..200u64 {
        match rng.random_range(0..10) {
            0..=4 => {
                let off = rng.random_range(0..12u64 << 20);
                let len = rng.random_range(1..(3 << 20));
                let d = pattern(step, len);
                f.pwrite(off, &d).await.unwrap();
                let end = off as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].copy_from_slice(&d);
            }
            5..=7 => {
                let off = rng.random_range(0..14u64 << 20);
                let len = rng.random_range(0..(3 << 20));
                let got = f.pread(off, len).await.unwrap();
                let o = (off as usize).min(model.len());
                let want = &model[o..(o + len).min(model.len())];
                assert!(got[..] == *want, "step {step}: read {off}+{len}");
            }
            8 => {
                let size = rng.random_range(0..10u64 << 20);
                f.truncate(size).await.unwrap();
                model.resize(size as usize, 0);
            }
            _ => {
                f.fsync().await.unwrap();
                assert_eq!(c.stat("/model").await.unwrap().size, model.len() as u64);
            }
        }
    }
    f.close().await.unwrap();
    assert_eq!(c.stat("/model").await.unwrap().size, model.len() as u64);
    assert!(c.read_file("/model").await.unwrap() == model);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_batch_and_blocking() {
    let cluster = Cluster::start(BIN, small()).expect("start cluster");
    let c = client(&cluster).await;
    let dir = std::env::temp_dir().join(format!("pond-it-client-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("src.bin");
    let data = pattern(3, (9 << 20) + 17);
    std::fs::write(&src, &data).unwrap();
    let mut seen = 0;
    assert_eq!(
        c.put(&src, "/put.bin", |n| seen = n).await.unwrap(),
        data.len() as u64
    );
    assert_eq!(seen, data.len() as u64);
    let dst = dir.join("dst.bin");
    c.get("/put.bin", &dst, |_| {}).await.unwrap();
    assert!(std::fs::read(&dst).unwrap() == data);

    // Batched: 1000 records of 4 KiB written in one submission, read back in random order.
    let rw = OpenOptions {
        mode: OpenMode::READ_WRITE,
        ..OpenOptions::write()
    };
    let f = Arc::new(c.open("/records", rw).await.unwrap());
    let rec = |k: u64| bytes_of(k);
    let writes: Vec<Request> = (0..1000)
        .map(|k| Request {
            file: f.clone(),
            offset: k * 4096,
            op: Op::Write {
                data: rec(k).into(),
            },
            tag: k,
        })
        .collect();
    for d in batch::submit(writes).unwrap().wait_all().await {
        assert!(matches!(d.result, Ok(Output::Written(4096))), "{d:?}");
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let reads: Vec<Request> = (0..2000)
        .map(|_| {
            let k = rng.random_range(0..1000u64);
            Request {
                file: f.clone(),
                offset: k * 4096,
                op: Op::ReadInto { buf: vec![0; 4096] },
                tag: k,
            }
        })
        .collect();
    for d in batch::submit(reads).unwrap().wait_all().await {
        let Ok(Output::ReadInto { buf, len }) = d.result else {
            panic!("{d:?}")
        };
        assert_eq!(len, 4096);
        assert_eq!(buf, rec(d.tag));
    }
    f.close().await.unwrap();
    assert_eq!(c.stat("/records").await.unwrap().size, 1000 * 4096);

    // The blocking wrapper from a plain thread.
    let cf = cluster.cluster_file().unwrap();
    let h = std::thread::spawn(move || {
        let b = BlockingClient::connect(&cf).unwrap();
        b.write_file("/blocking", b"from a thread").unwrap();
        let f = b.open("/blocking", OpenOptions::read()).unwrap();
        let got = f.pread(5, 100).unwrap();
        f.close().unwrap();
        assert_eq!(&got[..], b"a thread");
        b.read_dir("/").unwrap().len()
    });
    assert!(h.join().unwrap() >= 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn bytes_of(k: u64) -> Vec<u8> {
    (0..4096u64)
        .map(|i| ((i * 31 + k * 7) % 251) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_survives_a_storage_node_killed_midway() {
    let mut cluster = Cluster::start(BIN, small()).expect("start cluster");
    let c = client(&cluster).await;
    let data = pattern(21, 48 << 20);
    let writer = {
        let c = c.clone();
        let data = data.clone();
        tokio::spawn(async move {
            let f = c.create_file("/big").await?;
            for (k, part) in data.chunks(1 << 20).enumerate() {
                f.pwrite((k as u64) << 20, part).await?;
            }
            f.close().await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.kill9(Role::Storage(2)).unwrap();
    tokio::time::timeout(Duration::from_secs(120), writer)
        .await
        .expect("write finishes")
        .unwrap()
        .unwrap();
    assert_eq!(c.stat("/big").await.unwrap().size, data.len() as u64);
    assert!(
        c.read_file("/big").await.unwrap() == data,
        "bytes after failover"
    );
}

/// Reads `f` sequentially from `from` to its end in `step`-byte `pread`s.
async fn read_on(f: &pond_client::File, from: u64, step: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = from;
    loop {
        let b = f.pread(at, step).await.unwrap();
        if b.is_empty() {
            return out;
        }
        at += b.len() as u64;
        out.extend_from_slice(&b);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ahead_serves_sequential_readers_without_hiding_writes() {
    let cluster = Cluster::start(BIN, small()).expect("start cluster");
    let c = client(&cluster).await;
    let other = client(&cluster).await;
    let mib = 1usize << 20;
    let mut model = pattern(31, 24 * mib + 4321);
    c.write_file("/ra.bin", &model).await.unwrap();
    let r = c.open("/ra.bin", OpenOptions::read()).await.unwrap();
    let head = read_on_until(&r, 0, 256 << 10, 2 * mib).await;
    assert!(head == model[..2 * mib], "first 2 MiB");
    // A handle of the same client overwrites bytes the reader has read ahead (or is reading
    // ahead): the reader must see them as soon as the write returned.
    let w = c
        .open("/ra.bin", OpenOptions::existing(OpenMode::WRITE))
        .await
        .unwrap();
    let mine = pattern(32, mib + mib / 2);
    w.pwrite(3 * mib as u64 + 100, &mine).await.unwrap();
    model[3 * mib + 100..3 * mib + 100 + mine.len()].copy_from_slice(&mine);
    // Another client overwrites a later range and closes: close-to-open, so the open reader
    // may see the old or the new bytes there, nothing else.
    let old = model.clone();
    let theirs = pattern(33, mib);
    let o = other
        .open("/ra.bin", OpenOptions::existing(OpenMode::WRITE))
        .await
        .unwrap();
    o.pwrite(16 * mib as u64, &theirs).await.unwrap();
    o.close().await.unwrap();
    model[16 * mib..17 * mib].copy_from_slice(&theirs);
    let rest = read_on(&r, 2 * mib as u64, 256 << 10).await;
    assert_eq!(rest.len(), model.len() - 2 * mib);
    for (i, b) in rest.iter().enumerate() {
        let at = 2 * mib + i;
        if (16 * mib..17 * mib).contains(&at) {
            assert!(
                *b == model[at] || *b == old[at],
                "byte {at}: neither old nor new"
            );
        } else {
            assert_eq!(*b, model[at], "byte {at}");
        }
    }
    let s = r.read_ahead_stats();
    assert!(
        s.hits > 0 && s.issued > 0,
        "read-ahead served the reader: {s:?}"
    );
    assert!(
        s.drops >= 1,
        "the same-client write dropped the window: {s:?}"
    );
    r.close().await.unwrap();
    w.close().await.unwrap();
    // After close and a new open, the reader sees every closed write exactly.
    let r = c.open("/ra.bin", OpenOptions::read()).await.unwrap();
    let all = read_on(&r, 0, mib).await;
    assert!(all == model, "bytes after reopen");
    assert!(r.read_ahead_stats().hits > 0);
    r.close().await.unwrap();
}

/// `read_on`, stopping at `until`.
async fn read_on_until(f: &pond_client::File, from: u64, step: usize, until: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < until - from as usize {
        let b = f.pread(from + out.len() as u64, step).await.unwrap();
        assert!(!b.is_empty(), "short file");
        out.extend_from_slice(&b);
    }
    out
}
