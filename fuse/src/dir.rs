//! Open directory handles: stable `readdir` offsets over meta's name-cursor paging.
//!
//! FUSE asks for entries "after offset N"; meta pages "after name X". A handle keeps the
//! entries it has fetched so far (names, inodes, attributes) so offset N always means the same
//! entry for the life of the handle (`seekdir`/`telldir`/`rewinddir` work), and fetches the
//! next page only when the kernel reads past what it has. Offsets: 1 = ".", 2 = "..",
//! `k + 3` = the k-th fetched entry.

use pond_client::Client;
use pond_client::error::Result;
use pond_proto::InodeId;
use pond_proto::meta::{DirEntry, FileType, InodeAttr};

/// Entries per meta page while listing (the server caps it at `READDIR_PAGE_MAX`).
pub const DIR_PAGE: u32 = 512;

/// One entry as handed to the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Offset of the entry after this one (what the kernel passes back to continue).
    pub next_offset: i64,
    pub name: String,
    pub inode: InodeId,
    pub kind: FileType,
    pub attr: Option<InodeAttr>,
}

pub struct DirHandle {
    pub dir: InodeId,
    /// Inode of `..` (the directory itself for the root or when unknown).
    pub parent: InodeId,
    state: tokio::sync::Mutex<DirState>,
}

#[derive(Default)]
struct DirState {
    entries: Vec<(DirEntry, Option<InodeAttr>)>,
    /// Meta has more entries after the last fetched one.
    more: bool,
    started: bool,
}

impl DirHandle {
    pub fn new(dir: InodeId, parent: InodeId) -> DirHandle {
        DirHandle {
            dir,
            parent,
            state: tokio::sync::Mutex::new(DirState::default()),
        }
    }

    /// Up to `max` entries starting after `offset`, fetching pages from meta as needed.
    pub async fn list(&self, client: &Client, offset: i64, max: usize) -> Result<Vec<Listed>> {
        let mut st = self.state.lock().await;
        let mut out = Vec::new();
        let mut at = offset.max(0);
        while out.len() < max {
            match at {
                0 => out.push(self.dot(".", self.dir, 1)),
                1 => out.push(self.dot("..", self.parent, 2)),
                _ => {
                    let k = (at - 2) as usize;
                    while k >= st.entries.len() && (st.more || !st.started) {
                        let after = st.entries.last().map(|(e, _)| e.name.clone());
                        let (page, more) =
                            client.readdir_plus_page(self.dir, after, DIR_PAGE).await?;
                        st.started = true;
                        st.more = more && !page.is_empty();
                        st.entries
                            .extend(page.into_iter().map(|(e, a)| (e, Some(a))));
                    }
                    let Some((e, a)) = st.entries.get(k) else {
                        break;
                    };
                    out.push(Listed {
                        next_offset: at + 1,
                        name: e.name.clone(),
                        inode: e.inode,
                        kind: e.kind,
                        attr: a.clone(),
                    });
                }
            }
            at += 1;
        }
        Ok(out)
    }

    fn dot(&self, name: &str, inode: InodeId, next: i64) -> Listed {
        Listed {
            next_offset: next,
            name: name.to_string(),
            inode,
            kind: FileType::Dir,
            attr: None,
        }
    }
}
