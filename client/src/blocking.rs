//! A blocking wrapper for programs without an async runtime (scripts, FFI, data loaders
//! driven by plain threads). It owns a small tokio runtime; every call blocks the calling
//! thread until the async operation finishes. Do not call it from inside a tokio runtime.

use crate::batch;
use crate::client::{Client, ClientOptions, OpenOptions};
use crate::config::ClusterFile;
use crate::error::Result;
use crate::file::File;
use bytes::Bytes;
use pond_proto::meta::{DirEntry, InodeAttr, RenameMode};
use std::io::SeekFrom;
use std::path::Path;
use std::sync::Arc;

/// Worker threads of the wrapper's runtime: the client is I/O-bound; two workers keep reply
/// parsing off the caller's thread without competing with the caller for cores.
const BLOCKING_WORKERS: usize = 2;

pub struct BlockingClient {
    rt: Arc<tokio::runtime::Runtime>,
    client: Client,
}

impl BlockingClient {
    pub fn connect(cf: &ClusterFile) -> Result<BlockingClient> {
        BlockingClient::connect_with(cf, ClientOptions::default())
    }

    pub fn from_cluster_file(path: &Path) -> Result<BlockingClient> {
        let cf = ClusterFile::load(path)?;
        BlockingClient::connect(&cf)
    }

    pub fn connect_with(cf: &ClusterFile, opts: ClientOptions) -> Result<BlockingClient> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(BLOCKING_WORKERS)
            .thread_name("pond-client")
            .enable_all()
            .build()
            .map_err(|source| crate::ClientError::Local {
                path: "tokio runtime".into(),
                source,
            })?;
        let client = rt.block_on(Client::connect_with(cf, opts))?;
        Ok(BlockingClient {
            rt: Arc::new(rt),
            client,
        })
    }

    /// The async client underneath (to mix with async code on `runtime()`).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    pub fn stat(&self, path: &str) -> Result<InodeAttr> {
        self.rt.block_on(self.client.stat(path))
    }

    pub fn lstat(&self, path: &str) -> Result<InodeAttr> {
        self.rt.block_on(self.client.lstat(path))
    }

    pub fn open(&self, path: &str, opts: OpenOptions) -> Result<BlockingFile> {
        let f = self.rt.block_on(self.client.open(path, opts))?;
        Ok(BlockingFile {
            rt: self.rt.clone(),
            file: Arc::new(f),
        })
    }

    pub fn create(&self, path: &str) -> Result<BlockingFile> {
        self.open(path, OpenOptions::write())
    }

    pub fn mkdir(&self, path: &str, mode: u32) -> Result<InodeAttr> {
        self.rt.block_on(self.client.mkdir_path(path, mode))
    }

    pub fn mkdir_all(&self, path: &str, mode: u32) -> Result<InodeAttr> {
        self.rt.block_on(self.client.mkdir_all(path, mode))
    }

    pub fn unlink(&self, path: &str) -> Result<()> {
        self.rt.block_on(self.client.unlink_path(path))
    }

    pub fn rmdir(&self, path: &str) -> Result<()> {
        self.rt.block_on(self.client.rmdir_path(path))
    }

    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.rt
            .block_on(self.client.rename_path(from, to, RenameMode::Replace))
    }

    pub fn link(&self, existing: &str, new: &str) -> Result<InodeAttr> {
        self.rt.block_on(self.client.link_path(existing, new))
    }

    pub fn symlink(&self, target: &str, link: &str) -> Result<InodeAttr> {
        self.rt.block_on(self.client.symlink_path(target, link))
    }

    pub fn readlink(&self, path: &str) -> Result<String> {
        self.rt.block_on(self.client.readlink_path(path))
    }

    pub fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        self.rt.block_on(self.client.read_dir_all(path))
    }

    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        self.rt.block_on(self.client.read_file(path))
    }

    pub fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        self.rt.block_on(self.client.write_file(path, data))
    }

    pub fn put(&self, local: &Path, remote: &str) -> Result<u64> {
        self.rt.block_on(self.client.put(local, remote, |_| {}))
    }

    pub fn get(&self, remote: &str, local: &Path) -> Result<u64> {
        self.rt.block_on(self.client.get(remote, local, |_| {}))
    }

    /// Submits a batch and waits for every completion.
    pub fn batch(&self, reqs: Vec<batch::Request>) -> Result<Vec<batch::Completion>> {
        self.rt
            .block_on(async { Ok(batch::submit(reqs)?.wait_all().await) })
    }
}

/// An open file of a [`BlockingClient`].
pub struct BlockingFile {
    rt: Arc<tokio::runtime::Runtime>,
    file: Arc<File>,
}

impl BlockingFile {
    /// The async handle (for batched I/O requests).
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    pub fn size(&self) -> u64 {
        self.file.size()
    }

    pub fn pread(&self, offset: u64, len: usize) -> Result<Bytes> {
        self.rt.block_on(self.file.pread(offset, len))
    }

    pub fn pread_into(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.rt.block_on(self.file.pread_into(offset, buf))
    }

    pub fn pwrite(&self, offset: u64, data: &[u8]) -> Result<u64> {
        self.rt.block_on(self.file.pwrite(offset, data))
    }

    pub fn truncate(&self, size: u64) -> Result<()> {
        self.rt.block_on(self.file.truncate(size)).map(|_| ())
    }

    pub fn fsync(&self) -> Result<()> {
        self.rt.block_on(self.file.fsync())
    }

    pub fn stat(&self) -> Result<InodeAttr> {
        self.rt.block_on(self.file.stat())
    }

    pub fn close(self) -> Result<()> {
        self.rt.block_on(self.file.close())
    }
}

/// `std::io` adapters with a cursor, for code written against `Read`/`Write`/`Seek`.
pub struct BlockingCursor {
    file: BlockingFile,
    pos: u64,
}

impl BlockingCursor {
    pub fn new(file: BlockingFile) -> BlockingCursor {
        BlockingCursor { file, pos: 0 }
    }

    pub fn into_inner(self) -> BlockingFile {
        self.file
    }
}

impl std::io::Read for BlockingCursor {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.pread_into(self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Write for BlockingCursor {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let at = self.file.pwrite(self.pos, buf)?;
        self.pos = at + buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(self.file.rt.block_on(self.file.file.flush())?)
    }
}

impl std::io::Seek for BlockingCursor {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let base: i128 = match to {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::End(d) => self.file.size() as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if base < 0 {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.pos = base as u64;
        Ok(self.pos)
    }
}
