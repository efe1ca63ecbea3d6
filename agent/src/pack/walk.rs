//! The episode tree as the pack sees it: walked and read through
//! directory descriptors, one component at a time below the root, never
//! following a symlink (`ferry_durable::safe`). The walk records each
//! entry's `Snapshot`; the pack then requires every file it reads to be
//! that inode, unchanged, and every directory to be unchanged after the
//! last file ([`check_dirs`]), or the episode changed while packed
//! (`PackError::Changed`).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use ferry_durable::safe::{self, Dir, Kind, Snapshot};
use tokio_util::sync::CancellationToken;

use crate::pack::PackError;

/// One entry of the episode as the walk saw it, not following symlinks:
/// the file read later must be this very one (device, inode, type), and
/// unchanged (size, mtime, ctime). Small, since an episode may have very
/// many files and the list is held while packing.
pub(crate) struct Item {
    pub rel: Box<OsStr>,
    pub snap: Snapshot,
}

impl Item {
    pub fn kind(&self) -> Kind {
        self.snap.kind
    }

    /// Its directory (relative to the root) and its own name.
    pub fn parent_and_name(&self) -> (&Path, &OsStr) {
        let p = Path::new(&*self.rel);
        let parent = p.parent().unwrap_or(Path::new(""));
        (parent, p.file_name().unwrap_or(&self.rel))
    }
}

/// The episode's tree: its root opened without following a symlink, and
/// the directories above the entry being read, kept open while
/// consecutive entries share them. Every name is resolved one component
/// at a time below the root (`openat`, `O_NOFOLLOW`), so a directory
/// swapped for a symlink never leads outside.
pub(crate) struct Tree<'a> {
    pub src: &'a Path,
    root: Dir,
    root_snap: Snapshot,
    open: Vec<(OsString, Dir)>,
}

impl<'a> Tree<'a> {
    pub fn open(src: &'a Path) -> Result<Tree<'a>, PackError> {
        let read = |source| PackError::Read {
            path: src.to_owned(),
            source,
        };
        let root = Dir::open_nofollow(src).map_err(read)?;
        let root_snap = root.snapshot().map_err(read)?;
        Ok(Tree {
            src,
            root,
            root_snap,
            open: Vec::new(),
        })
    }

    /// The directory `rel` (relative to the root).
    pub fn dir(&mut self, rel: &Path) -> io::Result<&Dir> {
        let mut keep = 0;
        for (c, (open, _)) in rel.iter().zip(&self.open) {
            if c != open.as_os_str() {
                break;
            }
            keep += 1;
        }
        self.open.truncate(keep);
        for c in rel.iter().skip(keep) {
            let d = self
                .open
                .last()
                .map_or(&self.root, |(_, d)| d)
                .open_dir(c)?;
            self.open.push((c.to_owned(), d));
        }
        Ok(self.open.last().map_or(&self.root, |(_, d)| d))
    }
}

/// An error met at `rel`: a name gone or turned into another kind of file
/// since it was listed is the producer still at work (not ready), not a
/// read error.
pub(crate) fn entry_error(src: &Path, rel: &Path, e: io::Error) -> PackError {
    let path = src.join(rel);
    if e.kind() == io::ErrorKind::NotFound {
        PackError::Changed {
            path,
            what: "removed since it was listed",
        }
    } else if safe::not_regular(&e).is_some() || e.raw_os_error() == Some(libc::ENOTDIR) {
        PackError::Changed {
            path,
            what: "replaced by another kind of file",
        }
    } else {
        PackError::Read { path, source: e }
    }
}

/// Walk the tree, returning every entry below the root as seen by
/// `fstatat(AT_SYMLINK_NOFOLLOW)`, sorted bytewise by relative path.
pub(crate) fn walk(
    tree: &mut Tree<'_>,
    cancel: &CancellationToken,
) -> Result<Vec<Item>, PackError> {
    let src = tree.src;
    let mut items = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        if cancel.is_cancelled() {
            return Err(PackError::Cancelled);
        }
        let dir = tree.dir(&rel).map_err(|e| entry_error(src, &rel, e))?;
        let names = dir.names().map_err(|e| entry_error(src, &rel, e))?;
        for name in names {
            let child = rel.join(&name);
            let snap = dir
                .snapshot_at(&name)
                .map_err(|e| entry_error(src, &child, e))?;
            if snap.kind == Kind::Dir {
                stack.push(child.clone());
            }
            items.push(Item {
                rel: child.into_os_string().into_boxed_os_str(),
                snap,
            });
        }
    }
    items.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
    Ok(items)
}

/// After the last file: the root and every directory must be as the walk
/// saw them (an entry added, removed or renamed moves a directory's mtime
/// and ctime), or the archive is not a snapshot of one moment.
pub(crate) fn check_dirs(tree: &mut Tree<'_>, items: &[Item]) -> Result<(), PackError> {
    let src = tree.src;
    let root_now = tree
        .root
        .snapshot()
        .map_err(|e| entry_error(src, Path::new(""), e))?;
    let changed = |rel: &Path| PackError::Changed {
        path: src.join(rel),
        what: "an entry was added, removed or renamed while packing",
    };
    if !root_now.unchanged(&tree.root_snap) {
        return Err(changed(Path::new("")));
    }
    for item in items.iter().filter(|i| i.kind() == Kind::Dir) {
        let rel = Path::new(&*item.rel);
        let now = tree
            .dir(rel)
            .and_then(Dir::snapshot)
            .map_err(|e| entry_error(src, rel, e))?;
        if !now.unchanged(&item.snap) {
            return Err(changed(rel));
        }
    }
    Ok(())
}
