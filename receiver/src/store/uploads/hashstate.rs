//! A sha256 whose state can be saved and restored: an upload on S3 goes on
//! at whatever replica its next PATCH reaches, and the bytes already
//! received sit in multipart parts that S3 cannot read back, so the hash of
//! what came before must travel with the upload's row in the index.
//!
//! `sha2` 0.10 keeps its state private; it exports its block function
//! (`compress256`, the same accelerated code its `Sha256` runs), so the
//! state here is that function's eight words, the bytes of an unfinished
//! block and the length. Finishing is FIPS 180-4's padding: a `0x80`, zeros
//! to 56 bytes of the last block, the length in bits big-endian. The tests
//! prove it against `sha2::Sha256` for every split of random inputs.

use sha2::digest::generic_array::GenericArray;

/// The initial hash value of SHA-256 (FIPS 180-4, 5.3.3).
const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

const BLOCK: usize = 64;

/// Bytes of an encoded state at most: the words, the length, a partial
/// block.
pub const MAX_ENCODED: usize = 32 + 8 + BLOCK;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashState {
    words: [u32; 8],
    /// Bytes hashed, the partial block included.
    len: u64,
    /// The bytes of the block not yet full (fewer than 64).
    partial: Vec<u8>,
}

impl Default for HashState {
    fn default() -> Self {
        Self {
            words: H0,
            len: 0,
            partial: Vec::with_capacity(BLOCK),
        }
    }
}

/// An encoded state that is not one.
#[derive(Debug, thiserror::Error)]
#[error("a saved sha256 state of {0} bytes is not one (32 + 8 + under 64)")]
pub struct BadState(pub usize);

impl HashState {
    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        if !self.partial.is_empty() {
            let take = (BLOCK - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < BLOCK {
                return;
            }
            let block = GenericArray::clone_from_slice(&self.partial);
            sha2::compress256(&mut self.words, &[block]);
            self.partial.clear();
        }
        let whole = data.len() / BLOCK * BLOCK;
        compress(&mut self.words, &data[..whole]);
        self.partial.extend_from_slice(&data[whole..]);
    }

    /// The digest of everything hashed.
    pub fn finish(mut self) -> [u8; 32] {
        let bits = self.len.wrapping_mul(8);
        let mut tail = std::mem::take(&mut self.partial);
        tail.push(0x80);
        let padded = if tail.len() <= BLOCK - 8 {
            BLOCK
        } else {
            2 * BLOCK
        };
        tail.resize(padded - 8, 0);
        tail.extend_from_slice(&bits.to_be_bytes());
        compress(&mut self.words, &tail);
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(self.words) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    /// The state as bytes, to keep in the index.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_ENCODED);
        for w in self.words {
            out.extend_from_slice(&w.to_be_bytes());
        }
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(&self.partial);
        out
    }

    /// The state [`HashState::encode`] made; refuses bytes that cannot be
    /// one (the length must agree with the partial block).
    pub fn decode(b: &[u8]) -> Result<Self, BadState> {
        if b.len() < 40 || b.len() >= MAX_ENCODED {
            return Err(BadState(b.len()));
        }
        let mut words = [0u32; 8];
        for (w, c) in words.iter_mut().zip(b[..32].chunks_exact(4)) {
            *w = u32::from_be_bytes(c.try_into().expect("4 bytes"));
        }
        let len = u64::from_be_bytes(b[32..40].try_into().expect("8 bytes"));
        let partial = b[40..].to_vec();
        if len % BLOCK as u64 != partial.len() as u64 {
            return Err(BadState(b.len()));
        }
        Ok(Self {
            words,
            len,
            partial,
        })
    }
}

/// Runs the block function over `data`, a multiple of 64 bytes long, a
/// block at a time (each borrowed in place: no copy).
fn compress(words: &mut [u32; 8], data: &[u8]) {
    debug_assert_eq!(data.len() % BLOCK, 0);
    for block in data.chunks_exact(BLOCK) {
        sha2::compress256(words, std::slice::from_ref(GenericArray::from_slice(block)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sha2::Digest;

    fn reference(data: &[u8]) -> [u8; 32] {
        sha2::Sha256::digest(data).into()
    }

    #[test]
    fn known_answers() {
        assert_eq!(
            hex::encode(HashState::default().finish()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut h = HashState::default();
        h.update(b"abc");
        assert_eq!(
            hex::encode(h.finish()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // Lengths around the padding's edges: 55, 56, 63, 64, 65 bytes.
        for n in [55usize, 56, 63, 64, 65, 119, 120, 128] {
            let data = vec![0x61u8; n];
            let mut h = HashState::default();
            h.update(&data);
            assert_eq!(h.finish(), reference(&data), "{n} bytes");
        }
    }

    #[test]
    fn bad_encodings_are_refused() {
        for n in [0usize, 39, MAX_ENCODED, 200] {
            assert!(HashState::decode(&vec![0; n]).is_err(), "{n} bytes");
        }
        // A length that disagrees with the partial block.
        let mut b = HashState::default().encode();
        b[39] = 3;
        assert!(HashState::decode(&b).is_err());
    }

    proptest! {
        /// Any input, cut anywhere into pieces, with the state saved and
        /// restored between the pieces, hashes as `sha2::Sha256` does.
        #[test]
        fn split_saved_and_restored_agrees_with_sha2(
            data in proptest::collection::vec(any::<u8>(), 0..1000),
            cuts in proptest::collection::vec(0usize..1000, 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut h = HashState::default();
            let mut at = 0;
            for c in cuts.into_iter().chain([data.len()]) {
                h.update(&data[at..c]);
                at = c;
                h = HashState::decode(&h.encode()).unwrap();
                prop_assert_eq!(h.len(), c as u64);
            }
            prop_assert_eq!(h.finish(), reference(&data));
        }
    }
}
