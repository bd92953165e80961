//! Newtype ids of repository objects. Each wraps a BLAKE3 [`Digest`].

use std::fmt;

use bakare_crypto::Digest;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        pub struct $name(pub Digest);

        impl $name {
            pub fn to_hex(&self) -> String {
                self.0.to_hex()
            }
            pub fn from_hex(s: &str) -> Option<Self> {
                Digest::from_hex(s).map(Self)
            }
            /// The first 8 hex digits, as shown to users.
            pub fn short(&self) -> String {
                let mut s = self.to_hex();
                s.truncate(8);
                s
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

id_type!(
    /// Keyed BLAKE3 of a blob's plaintext.
    BlobId
);
id_type!(
    /// BLAKE3 of a pack file's bytes.
    PackId
);
id_type!(
    /// BLAKE3 of a snapshot file's bytes.
    SnapshotId
);

/// What a blob holds. Stored as one byte in blob tables and index segments.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize, serde::Deserialize)]
pub enum BlobKind {
    Data,
    Tree,
}

impl BlobKind {
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Data => 0,
            Self::Tree => 1,
        }
    }

    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Data),
            1 => Some(Self::Tree),
            _ => None,
        }
    }
}
