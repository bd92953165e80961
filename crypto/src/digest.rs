//! A 32-byte BLAKE3 digest, the one hash type that crosses crate lines.

use std::fmt;

/// A BLAKE3 output (keyed or not). Ids of blobs, packs and snapshots are built on it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s
    }

    /// Parses 64 hex characters; `None` for anything else.
    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let hi = hex_val(*pair.first()?)?;
            let lo = hex_val(*pair.get(1)?)?;
            *o = (hi << 4) | lo;
        }
        Some(Self(out))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Unkeyed BLAKE3 of bytes: names of content-addressed objects and checksums.
pub fn checksum(bytes: &[u8]) -> Digest {
    Digest(*blake3::hash(bytes).as_bytes())
}

/// The first `N` bytes of BLAKE3(key length (u64 LE) ‖ key ‖ value): the checksum of a value
/// in a local database, bound to its key so that a value moved under another key fails too.
pub fn bound_checksum<const N: usize>(key: &[u8], value: &[u8]) -> [u8; N] {
    let mut h = blake3::Hasher::new();
    h.update(&(key.len() as u64).to_le_bytes()).update(key).update(value);
    let mut out = [0u8; N];
    h.finalize_xof().fill(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_checksum_is_a_prefix_of_the_hash_of_length_key_and_value() {
        // The layout docs/FORMAT.md gives for the local databases: any change breaks their files.
        let mut whole = 3u64.to_le_bytes().to_vec();
        whole.extend_from_slice(b"keyvalue");
        let h = blake3::hash(&whole);
        assert_eq!(bound_checksum::<16>(b"key", b"value"), h.as_bytes()[..16]);
        assert_eq!(bound_checksum::<8>(b"key", b"value"), h.as_bytes()[..8]);
        assert_ne!(bound_checksum::<8>(b"ke", b"yvalue"), bound_checksum::<8>(b"key", b"value"));
    }

    #[test]
    fn hex_round_trip() {
        let d = checksum(b"abc");
        assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(Digest::from_hex("zz"), None);
        assert_eq!(Digest::from_hex(&"g".repeat(64)), None);
    }
}
