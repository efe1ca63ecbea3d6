//! Tests of the local object store.

use super::writer::HASH_APART;
use super::*;
use crate::store::objects::Chunk;
use bytes::Bytes;
use sha2::Digest as _;

fn store(dir: &Path) -> LocalObjects {
    LocalObjects::new(dir.join("objects"), dir.join("tmp"))
}

#[test]
fn objects_are_sharded_by_digest_inside_the_root() {
    let s = LocalObjects::new("/d/objects".into(), "/d/tmp".into());
    let sha = Sha256::parse(&format!("abcd{}", "0".repeat(60))).unwrap();
    assert_eq!(
        s.path_of(&sha),
        PathBuf::from(format!("/d/objects/ab/abcd{}", "0".repeat(60)))
    );
}

#[tokio::test]
async fn prepare_makes_every_shard_and_migrate_moves_the_first_layout_after() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    // A store of the first layout: <aa>/<bb>/<sha256>.
    let sha = format!("abcd{}", "1".repeat(60));
    let old = dir.path().join("objects/ab/cd");
    fs::create_dir_all(&old).unwrap();
    fs::write(old.join(&sha), b"old object").unwrap();
    s.prepare().await.unwrap();
    let moved = s.path_of(&Sha256::parse(&sha).unwrap());
    // Before the migration (after READY), the object is found where it is.
    let parsed = Sha256::parse(&sha).unwrap();
    assert_eq!(s.stat(&parsed).await.unwrap(), Some(10));
    assert!(!moved.exists());
    s.migrate(tokio_util::sync::CancellationToken::new()).await;
    assert_eq!(moved, dir.path().join("objects/ab").join(&sha));
    assert_eq!(fs::read(&moved).unwrap(), b"old object");
    assert!(!old.exists(), "the old second-level directory is removed");
    let shards = fs::read_dir(dir.path().join("objects"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
        .count();
    assert_eq!(shards, 256);
    assert!(dir.path().join("objects").join(LAYOUT_MARK).exists());
    // Marked: a second start does not scan the shards again.
    fs::create_dir(dir.path().join("objects/ab/ef")).unwrap();
    s.prepare().await.unwrap();
    s.migrate(tokio_util::sync::CancellationToken::new()).await;
    assert!(dir.path().join("objects/ab/ef").exists());
}

async fn write(s: &LocalObjects, parts: &[&[u8]], finish: bool) -> Option<Written> {
    let Staging { tx, done: handle } = s.begin(&Sha256::from_bytes(&[0; 32]), 0);
    for p in parts {
        tx.send(Chunk::Data(Bytes::copy_from_slice(p)))
            .await
            .unwrap();
    }
    if finish {
        tx.send(Chunk::Finish).await.unwrap();
    }
    drop(tx);
    let staged = handle.await.unwrap().unwrap()?;
    Some(*staged.held.downcast::<Written>().unwrap())
}

fn temp_files(s: &LocalObjects) -> usize {
    fs::read_dir(s.tmp_dir()).unwrap().count()
}

async fn settle() {
    // TempFile's drop deletes on the blocking pool.
    tokio::task::spawn_blocking(|| ()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}

#[tokio::test]
async fn a_large_batch_is_synced_with_syncfs_and_placed() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.prepare().await.unwrap();
    let mut batch = Vec::new();
    for i in 0..SYNCFS_MIN + 2 {
        batch.push(
            write(&s, &[format!("body {i}").as_bytes()], true)
                .await
                .unwrap(),
        );
    }
    assert!(batch.iter().all(|w| !w.synced));
    let s2 = s.clone();
    let placed = tokio::task::spawn_blocking(move || {
        let synced = s2.sync_batch(&batch.iter().collect::<Vec<_>>());
        assert!(synced.iter().all(Result::is_ok), "{synced:?}");
        let mut shards = Vec::new();
        let mut shas = Vec::new();
        for w in batch {
            shas.push(w.sha256.clone());
            shards.push(s2.place(w).unwrap());
        }
        let dirs = s2.dirs_to_sync(shards);
        assert!(dirs.len() >= SYNCFS_MIN, "enough directories for syncfs");
        assert!(s2.sync_dirs(&dirs).is_empty());
        shas
    })
    .await
    .unwrap();
    for sha in placed {
        assert!(s.stat(&sha).await.unwrap().is_some());
    }
    settle().await;
    assert_eq!(temp_files(&s), 0);
}

#[test]
fn a_few_directories_are_fsynced_each_and_fail_alone_until_synced() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let missing = dir.path().join("missing");
    let dirs: BTreeSet<PathBuf> = [a, missing.clone(), b].into_iter().collect();
    let failed = s.sync_dirs(&dirs);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, missing.clone());
    assert_eq!(failed[0].1.errno(), Some(libc::ENOENT));
    assert!(
        failed[0].1.to_string().contains("missing"),
        "{}",
        failed[0].1
    );
    // The one that failed is synced again with the next batch.
    assert_eq!(s.dirs_to_sync([]), [missing].into_iter().collect());
}

#[tokio::test]
async fn a_large_body_hashed_apart_has_the_same_digest_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.prepare().await.unwrap();
    // Across the switch to the hashing thread, in uneven chunks.
    let body: Vec<u8> = (0..(3 * HASH_APART as usize + 4321))
        .map(|i| (i * 31 % 253) as u8)
        .collect();
    let parts: Vec<&[u8]> = body.chunks(65_521).collect();
    let w = write(&s, &parts, true).await.unwrap();
    assert_eq!(w.size, body.len() as u64);
    let want = Sha256::from_bytes(&sha2::Sha256::digest(&body).into());
    assert_eq!(w.sha256, want);
    assert_eq!(fs::read(w.temp.path()).unwrap(), body);
    // Below the threshold the writer thread hashes: the same digest.
    let small = &body[..HASH_APART as usize - 1];
    let w = write(&s, &[small], true).await.unwrap();
    let want = Sha256::from_bytes(&sha2::Sha256::digest(small).into());
    assert_eq!(w.sha256, want);
}

#[tokio::test]
async fn upload_is_hashed_committed_and_abort_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.prepare().await.unwrap();
    let w = write(&s, &[b"hello ", b"world"], true).await.unwrap();
    assert_eq!(w.size, 11);
    let expected = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";
    assert_eq!(w.sha256.as_str(), expected);
    assert!(!w.synced, "a small upload leaves its sync to the batch");
    let sha = w.sha256.clone();
    let s2 = s.clone();
    let dest = s.path_of(&sha);
    // A shard that went missing is made again, and its entry in the
    // root synced with the object.
    fs::remove_dir(dest.parent().unwrap()).unwrap();
    tokio::task::spawn_blocking(move || {
        let synced = s2.sync_batch(&[&w]);
        assert!(synced.iter().all(Result::is_ok));
        let shard = s2.place(w).unwrap();
        let dirs = s2.dirs_to_sync([shard]);
        assert!(
            dirs.contains(s2.root()),
            "the new shard's entry in the root is synced"
        );
        assert!(s2.sync_dirs(&dirs).is_empty());
    })
    .await
    .unwrap();
    assert_eq!(fs::read(&dest).unwrap(), b"hello world");
    assert_eq!(hash_file(&dest).unwrap().0, sha);
    assert_eq!(s.stat(&sha).await.unwrap(), Some(11));
    settle().await;
    assert_eq!(temp_files(&s), 0);

    assert!(write(&s, &[b"partial"], false).await.is_none());
    settle().await;
    assert_eq!(temp_files(&s), 0, "an aborted upload leaves no temp file");

    // A verified file that is dropped instead of committed is deleted.
    let w = write(&s, &[b"x"], true).await.unwrap();
    drop(w);
    settle().await;
    assert_eq!(temp_files(&s), 0);

    s.remove(&sha).await.unwrap();
    assert_eq!(s.stat(&sha).await.unwrap(), None);
    s.check_writable().await.unwrap();
    assert!(s.free_bytes().await.unwrap() > 0);
}
