//! The tar walker for tarballs the agent did not just make: one left in
//! the outbox by an earlier run is re-hashed before it is shipped, and
//! whoever can write the outbox could have put anything there. While it is
//! hashed, it is decoded and its tar headers walked: it ships only if it is
//! an archive of this episode (zstd frames holding a tar whose first entry
//! is `<id>/` and every other entry a directory, regular file or symlink
//! below it), so an unrelated `.zst`, or any other file, is never sent
//! under the episode's id. Fuzzed (`fuzz/` compiles this file into its
//! target, so it depends on nothing of the agent's).

use std::io::{self, Read};
use std::path::Component;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::Digest;

/// Why a tarball cannot be shipped as the episode.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Reading the file failed (EIO, …): the file may be fine.
    #[error("{0}")]
    Read(io::Error),
    /// Not an archive of this episode.
    #[error("not an archive of this episode: {0}")]
    Foreign(String),
    #[error("cancelled")]
    Cancelled,
}

/// What the whole file hashed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub digest: [u8; 32],
    pub size: u64,
}

/// Hashes and counts every byte read through it, and keeps the first read
/// error of the underlying file so that it is not taken for bad data.
struct Hashing<'a, R> {
    inner: R,
    hasher: sha2::Sha256,
    size: u64,
    progress: Option<&'a AtomicU64>,
    stop: &'a dyn Fn() -> bool,
    error: Option<CheckError>,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if (self.stop)() {
            self.error = Some(CheckError::Cancelled);
            return Err(io::Error::other("cancelled"));
        }
        let n = loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let copy = io::Error::new(e.kind(), e.to_string());
                    self.error = Some(CheckError::Read(e));
                    return Err(copy);
                }
                Ok(n) => break n,
            }
        };
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        if let Some(p) = self.progress {
            p.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// Walk the archive in `r` (read to its end) and hash all of it. `id` is
/// the episode the archive must hold; `progress` counts bytes read; `stop`
/// cancels (checked before each read).
pub fn check(
    r: impl Read,
    id: &str,
    progress: Option<&AtomicU64>,
    stop: &dyn Fn() -> bool,
) -> Result<Checked, CheckError> {
    let mut hashing = Hashing {
        inner: r,
        hasher: sha2::Sha256::new(),
        size: 0,
        progress,
        stop,
        error: None,
    };
    let walked = walk(&mut hashing, id);
    // The reader's own error (EIO, cancel) wins over what it caused.
    if let Some(e) = hashing.error.take() {
        return Err(e);
    }
    walked?;
    // Whatever follows the archive is hashed too: it would be shipped.
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| match hashing.error.take() {
        Some(e) => e,
        None => CheckError::Read(e),
    })?;
    Ok(Checked {
        digest: hashing.hasher.finalize().into(),
        size: hashing.size,
    })
}

fn walk(r: impl Read, id: &str) -> Result<(), CheckError> {
    let foreign = |what: String| CheckError::Foreign(what);
    let bad = |e: io::Error| foreign(format!("undecodable: {e}"));
    let decoder = zstd::Decoder::new(r).map_err(bad)?;
    let mut archive = tar::Archive::new(decoder);
    let mut first = true;
    for entry in archive.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let kind = entry.header().entry_type();
        let path = entry.path().map_err(bad)?;
        let mut parts = path.components();
        let top = match parts.next() {
            Some(Component::Normal(c)) => c.to_str() == Some(id),
            _ => false,
        };
        let rest_ok = parts.all(|c| matches!(c, Component::Normal(_)));
        if !top || !rest_ok {
            return Err(foreign(format!("entry {path:?} is not below {id}/")));
        }
        if first && (path.components().count() != 1 || !kind.is_dir()) {
            return Err(foreign(format!("first entry {path:?} is not {id}/")));
        }
        if !(kind.is_dir() || kind.is_file() || kind.is_symlink()) {
            return Err(foreign(format!("entry {path:?} has type {kind:?}")));
        }
        first = false;
    }
    if first {
        return Err(foreign("no entries".into()));
    }
    // Decode to the end: the remaining frames must be valid zstd too.
    let mut decoder = archive.into_inner();
    io::copy(&mut decoder, &mut io::sink()).map_err(bad)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_zst(entries: &[(&str, tar::EntryType)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, t) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*t);
            h.set_size(1);
            h.set_mode(0o644);
            h.set_cksum();
            let data: &[u8] = if t.is_file() { b"x" } else { b"" };
            h.set_size(data.len() as u64);
            b.append_data(&mut h, p, data).unwrap();
        }
        zstd::encode_all(&b.into_inner().unwrap()[..], 3).unwrap()
    }

    #[test]
    fn only_an_archive_of_this_episode_passes() {
        use tar::EntryType::{Directory, Regular, Symlink};
        let good = tar_zst(&[("ep", Directory), ("ep/a", Regular), ("ep/l", Symlink)]);
        let c = check(&good[..], "ep", None, &|| false).unwrap();
        assert_eq!(c.size, good.len() as u64);
        assert_eq!(c.digest, <[u8; 32]>::from(sha2::Sha256::digest(&good)));
        let foreign = |bytes: &[u8], id| {
            matches!(
                check(bytes, id, None, &|| false),
                Err(CheckError::Foreign(_))
            )
        };
        assert!(foreign(&good, "other"));
        assert!(foreign(b"root:x:0:0::/root:/bin/sh\n", "ep"));
        assert!(foreign(&zstd::encode_all(&b"hello"[..], 3).unwrap(), "ep"));
        assert!(
            foreign(&tar_zst(&[("ep/a", Regular)]), "ep"),
            "no top entry"
        );
        assert!(foreign(
            &tar_zst(&[("ep", Directory), ("x", Regular)]),
            "ep"
        ));
        let fifo = tar_zst(&[("ep", Directory), ("ep/f", tar::EntryType::Fifo)]);
        assert!(foreign(&fifo, "ep"));
        let mut tail = good.clone();
        tail.extend_from_slice(b"junk");
        assert!(foreign(&tail, "ep"), "trailing bytes are not zstd");
    }

    #[test]
    fn a_read_error_is_not_taken_for_bad_data() {
        struct Eio;
        impl Read for Eio {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
        }
        let e = check(Eio, "ep", None, &|| false).unwrap_err();
        assert!(
            matches!(&e, CheckError::Read(e) if e.raw_os_error() == Some(libc::EIO)),
            "{e:?}"
        );
    }
}
