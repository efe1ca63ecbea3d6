//! The independent oracle for what `ferry-agent` packs: the archive is
//! unpacked by the system's `zstd -dc | tar -x`, never by ferry, and the
//! tree it gives is compared with the source episode byte for byte (`diff
//! -r --no-dereference`) and entry by entry (kind, symlink target, mode as
//! SPEC §1 normalises it, file mtime). A packer that truncated, zeroed or
//! dropped files the same way every time would still agree with a fresh
//! `ferry-agent pack`; it cannot agree with this.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::lacks;

/// One entry of a tree as the oracle compares it.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    /// Normalised mode and mtime (seconds); the bytes are `diff`'s job.
    File {
        mode: u32,
        mtime: i64,
    },
    Dir,
    Symlink(std::path::PathBuf),
    Other(u32),
}

/// Every entry under `root` by relative path, symlinks not followed.
fn entries(root: &Path) -> BTreeMap<String, (Entry, u32)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (Entry, u32)>) {
        let rd = fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
        for e in rd {
            let p = e.expect("dir entry").path();
            let m = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let mode = m.permissions().mode() & 0o7777;
            let ft = m.file_type();
            let entry = if ft.is_symlink() {
                Entry::Symlink(fs::read_link(&p).unwrap())
            } else if ft.is_dir() {
                walk(root, &p, out);
                Entry::Dir
            } else if ft.is_file() {
                Entry::File {
                    mode: 0,
                    mtime: m.mtime(),
                }
            } else {
                Entry::Other(m.mode())
            };
            out.insert(rel, (entry, mode));
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// SPEC §1's normalised mode for a file: executable by anyone → 0755,
/// else 0644.
fn normal_file_mode(mode: u32) -> u32 {
    if mode & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

/// Unpack `archive` (tar.zst) with the system's tools into a temp dir.
fn unpack(archive: &Path, into: &Path) {
    let mut zstd = Command::new("zstd")
        .args(["-dc", "-q", "--"])
        .arg(archive)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn zstd -dc");
    let tar = Command::new("tar")
        // -p: modes as archived (no umask); --no-same-owner: the archive's
        // owners are zeroed, and root would otherwise apply them.
        .args(["-x", "-p", "--no-same-owner", "-f", "-", "-C"])
        .arg(into)
        .stdin(zstd.stdout.take().unwrap())
        .output()
        .expect("spawn tar -x");
    let z = zstd.wait().expect("wait zstd");
    assert!(z.success(), "zstd -dc {} failed: {z}", archive.display());
    assert!(
        tar.status.success(),
        "tar -x of {} failed: {}",
        archive.display(),
        String::from_utf8_lossy(&tar.stderr)
    );
}

/// Assert that `archive`, unpacked by the system's `zstd` and `tar`, is
/// exactly `episode` under `<id>/` (id = the episode directory's name):
/// nothing else at the top, the same entries, the same bytes, the same
/// symlink targets, files at their normalised mode with their mtime kept,
/// directories 0755. `test` names the caller for a skip.
pub fn assert_archive_is_episode(archive: &Path, episode: &Path, test: &str) {
    for tool in ["zstd", "tar", "diff"] {
        if lacks(tool, &format!("{test} (archive oracle)")) {
            return;
        }
    }
    let id = episode.file_name().expect("episode dir name");
    let tmp = tempfile::tempdir().expect("tempdir");
    unpack(archive, tmp.path());
    let top: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        top,
        vec![id.to_os_string()],
        "{}: the archive's top level is not <id>/ alone",
        archive.display()
    );
    let got_root = tmp.path().join(id);
    let diff = Command::new("diff")
        .args(["-r", "--no-dereference", "-q"])
        .arg(episode)
        .arg(&got_root)
        .output()
        .expect("spawn diff");
    assert!(
        diff.status.success(),
        "{} differs from its episode {} (diff -r):\n{}{}",
        archive.display(),
        episode.display(),
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
    let want = entries(episode);
    let got = entries(&got_root);
    let names = |m: &BTreeMap<String, (Entry, u32)>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want), "{}: entries", archive.display());
    for (rel, (w, wmode)) in &want {
        let (g, gmode) = &got[rel];
        let where_ = format!("{}: {rel}", archive.display());
        match (w, g) {
            (Entry::File { mtime: wt, .. }, Entry::File { mtime: gt, .. }) => {
                assert_eq!(
                    *gmode,
                    normal_file_mode(*wmode),
                    "{where_}: mode {gmode:o} for a source mode {wmode:o}"
                );
                assert_eq!(gt, wt, "{where_}: mtime not kept");
            }
            (Entry::Dir, Entry::Dir) => assert_eq!(*gmode, 0o755, "{where_}: directory mode"),
            (Entry::Symlink(a), Entry::Symlink(b)) => assert_eq!(b, a, "{where_}: symlink target"),
            _ => panic!("{where_}: {g:?} in the archive for {w:?} in the episode"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn episode(root: &Path) -> std::path::PathBuf {
        let ep = root.join("src").join("ep-1");
        fs::create_dir_all(ep.join("d")).unwrap();
        fs::write(ep.join("d/a.bin"), crate::noise(1, 5000)).unwrap();
        fs::write(ep.join("run.sh"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(ep.join("run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(ep.join("d/a.bin"), fs::Permissions::from_mode(0o600)).unwrap();
        symlink("d/a.bin", ep.join("link")).unwrap();
        ep
    }

    /// An archive made the way SPEC §1 says (normalised modes, GNU tar
    /// options) passes; one with a truncated file, a wrong mode or a
    /// retargeted symlink fails. The oracle can fail.
    #[test]
    fn the_archive_oracle_accepts_the_episode_and_rejects_each_kind_of_damage() {
        const T: &str =
            "oracle::the_archive_oracle_accepts_the_episode_and_rejects_each_kind_of_damage";
        if lacks("zstd", T) || lacks("tar", T) {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let ep = episode(t.path());
        let pack = |src_parent: &Path, out: &Path| {
            let st = Command::new("sh")
                .arg("-c")
                .arg(
                    "tar --owner=0 --group=0 --mode='u+rw,go+r,go-w' -C \"$1\" -cf - ep-1 \
                     | zstd -q -c > \"$2\"",
                )
                .arg("sh")
                .arg(src_parent)
                .arg(out)
                .status()
                .unwrap();
            assert!(st.success());
        };
        // The source as ferry would normalise it: 0700 → 0755, 0600 → 0644.
        let norm = t.path().join("norm");
        fs::create_dir_all(&norm).unwrap();
        assert!(Command::new("cp")
            .args(["-a"])
            .arg(&ep)
            .arg(&norm)
            .status()
            .unwrap()
            .success());
        let n = norm.join("ep-1");
        fs::set_permissions(n.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(n.join("d/a.bin"), fs::Permissions::from_mode(0o644)).unwrap();
        let good = t.path().join("good.tar.zst");
        pack(&norm, &good);
        assert_archive_is_episode(&good, &ep, T);

        let damaged = |name: &str, damage: &dyn Fn(&Path)| {
            let d = t.path().join(name);
            fs::create_dir_all(&d).unwrap();
            assert!(Command::new("cp")
                .arg("-a")
                .arg(&n)
                .arg(&d)
                .status()
                .unwrap()
                .success());
            damage(&d.join("ep-1"));
            let a = t.path().join(format!("{name}.tar.zst"));
            pack(&d, &a);
            let r = std::panic::catch_unwind(|| assert_archive_is_episode(&a, &ep, T));
            assert!(r.is_err(), "{name}: the oracle accepted a damaged archive");
        };
        damaged("truncated", &|e| {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(e.join("d/a.bin"))
                .unwrap();
            let mtime = fs::metadata(e.join("d/a.bin")).unwrap().modified().unwrap();
            f.set_len(100).unwrap();
            f.set_modified(mtime).unwrap();
        });
        damaged("mode", &|e| {
            fs::set_permissions(e.join("run.sh"), fs::Permissions::from_mode(0o644)).unwrap()
        });
        damaged("symlink", &|e| {
            fs::remove_file(e.join("link")).unwrap();
            symlink("run.sh", e.join("link")).unwrap();
        });
        damaged("extra", &|e| fs::write(e.join("extra"), b"x").unwrap());
    }
}
