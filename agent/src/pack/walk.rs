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
    /// The directories from the root down to the last one asked for; only
    /// the deepest [`MAX_OPEN`] hold a descriptor.
    open: Vec<(OsString, Option<Dir>)>,
}

/// Directory descriptors the walk keeps open. A producer can nest
/// directories thousands deep; one descriptor per level ran the agent out
/// of descriptors (EMFILE), quarantining the episode as unreadable and
/// failing whatever else the agent opened meanwhile. A level above these is
/// reopened from the deepest one still open (or the root) when needed.
const MAX_OPEN: usize = 32;

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
        // Levels closed to bound the descriptors, below the deepest open.
        let from = self
            .open
            .iter()
            .rposition(|(_, d)| d.is_some())
            .map_or(0, |i| i + 1);
        for i in from..self.open.len() {
            let d = self.level(i)?.open_dir(&self.open[i].0)?;
            self.open[i].1 = Some(d);
            self.close_above(i);
        }
        for c in rel.iter().skip(keep) {
            let d = self.level(self.open.len())?.open_dir(c)?;
            self.open.push((c.to_owned(), Some(d)));
            self.close_above(self.open.len() - 1);
        }
        self.level(self.open.len())
    }

    /// The open parent of level `i` (the root for level 0).
    fn level(&self, i: usize) -> io::Result<&Dir> {
        match i.checked_sub(1) {
            None => Ok(&self.root),
            Some(p) => self.open[p]
                .1
                .as_ref()
                .ok_or_else(|| io::Error::other("walk: a directory level was closed while in use")),
        }
    }

    /// Level `i` was just opened: close the one [`MAX_OPEN`] above it.
    fn close_above(&mut self, i: usize) {
        if let Some(far) = i.checked_sub(MAX_OPEN) {
            self.open[far].1 = None;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Levels above the open window are reopened: jumping back up to a
    /// closed level and down again reaches the very directories the path
    /// names, with no more than the window's descriptors held.
    #[test]
    fn closed_levels_are_reopened_to_the_same_directories() {
        let t = tempfile::tempdir().unwrap();
        let depth = 3 * MAX_OPEN;
        let rel = |n: usize| -> PathBuf { (0..n).map(|i| format!("l{i}")).collect() };
        std::fs::create_dir_all(t.path().join(rel(depth))).unwrap();
        let mut tree = Tree::open(t.path()).unwrap();
        for n in [depth, 5, depth - 1, MAX_OPEN + 3, 1, depth, 0, 2 * MAX_OPEN] {
            let got = tree.dir(&rel(n)).unwrap().snapshot().unwrap().ino;
            let want = std::fs::metadata(t.path().join(rel(n))).unwrap().ino();
            assert_eq!(got, want, "level {n}");
            let open = tree.open.iter().filter(|(_, d)| d.is_some()).count();
            assert!(open <= MAX_OPEN + 1, "level {n}: {open} descriptors held");
        }
    }
}
