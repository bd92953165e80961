//! Creating and opening a repository: the master key sealed under a passphrase (two key
//! files), `config` and its mirror, and the check that a key in hand belongs to the
//! repository.

use std::sync::Arc;

use bakare_crypto::{KdfParams, MasterKey, open_key_file, parse_key_file, seal_key_file};

use super::{Access, Core, Repository, now_ns};
use crate::backend::Backend;
use crate::format::config::{ChunkerParams, Config};
use crate::format::object::{get_verified, id_of_path};
use crate::{Result, StoreError};

impl Repository {
    /// Creates a repository: a new master key sealed under `passphrase`, then `config.mirror`
    /// and `config` (written last: its presence is what makes the folder a repository).
    pub fn init(backend: Arc<dyn Backend>, passphrase: &[u8], kdf: KdfParams, chunker: ChunkerParams) -> Result<Self> {
        Self::init_with_pack_size(backend, passphrase, kdf, chunker, 16 << 20)
    }

    /// As [`Repository::init`], with a target pack size in bytes (small packs are for tests).
    pub fn init_with_pack_size(
        backend: Arc<dyn Backend>,
        passphrase: &[u8],
        kdf: KdfParams,
        chunker: ChunkerParams,
        pack_size: u32,
    ) -> Result<Self> {
        if backend.get("config").is_ok() || backend.get("config.mirror").is_ok() {
            return Err(StoreError::AlreadyExists { path: backend.location() });
        }
        chunker.check().map_err(|e| StoreError::corrupt("config", e))?;
        let master = MasterKey::generate()?;
        // Two independently sealed key files (own salt and nonce): one rotted key file must
        // not lock the owner out.
        for _ in 0..2 {
            let key_file = seal_key_file(&master, passphrase, kdf)?;
            backend.put(&format!("keys/{}", bakare_crypto::checksum(&key_file)), &key_file)?;
        }
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| bakare_crypto::CryptoError::Random(e.to_string()))?;
        let config = Config {
            id,
            chunker,
            data_public: master.write.data_public.0,
            pack_size: pack_size.max(64 << 10),
            created_ns: now_ns(),
        };
        let bytes = config.encode()?;
        backend.put("config.mirror", &bytes)?;
        backend.put("config", &bytes)?;
        Ok(Self::assemble(Core { backend, config, access: Access::Master(master) }))
    }

    /// Reads `config`, falling back to `config.mirror` if it is missing or damaged.
    pub fn read_config(backend: &dyn Backend) -> Result<Config> {
        let primary = backend.get("config").map_err(StoreError::from).and_then(|b| Config::decode("config", &b));
        match primary {
            Ok(c) => Ok(c),
            Err(e @ StoreError::NewerFormat { .. }) => Err(e),
            Err(first) => match backend.get("config.mirror") {
                Ok(b) => Config::decode("config.mirror", &b),
                Err(e) if e.is_not_found() && matches!(first, StoreError::Backend(ref b) if b.is_not_found()) => {
                    Err(StoreError::NotARepository { path: backend.location() })
                }
                Err(_) => Err(first),
            },
        }
    }

    /// Opens with a passphrase, trying each key file.
    pub fn open_with_passphrase(backend: Arc<dyn Backend>, passphrase: &[u8]) -> Result<Self> {
        let config = Self::read_config(backend.as_ref())?;
        Self::open_with_passphrase_and_config(backend, config, passphrase)
    }

    /// As [`Repository::open_with_passphrase`], with the config already read (by
    /// [`Repository::read_config`]: a caller that checked for a repository first).
    pub fn open_with_passphrase_and_config(
        backend: Arc<dyn Backend>,
        config: Config,
        passphrase: &[u8],
    ) -> Result<Self> {
        let mut last = StoreError::WrongPassphrase;
        for path in backend.list("keys")? {
            let Some(name) = id_of_path(&path) else { continue };
            let bytes = match get_verified(backend.as_ref(), &path, &name) {
                Ok(b) => b,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            match open_key_file(&bytes, passphrase) {
                Ok(master) => return Self::with_key(backend, config, Access::Master(master)),
                Err(bakare_crypto::CryptoError::WrongPassphrase) => {}
                Err(e) => last = StoreError::crypto(path, e),
            }
        }
        Err(last)
    }

    /// Opens with a key already in hand (master or put-only).
    pub fn open_with_key(backend: Arc<dyn Backend>, access: Access) -> Result<Self> {
        let config = Self::read_config(backend.as_ref())?;
        Self::with_key(backend, config, access)
    }

    fn with_key(backend: Arc<dyn Backend>, config: Config, access: Access) -> Result<Self> {
        let key_public = access.write_key().data_public;
        // A stale or foreign `config` that still decodes: the mirror may be the right one.
        let config = if key_public == config.data_public() {
            config
        } else {
            match backend.get("config.mirror").map(|b| Config::decode("config.mirror", &b)) {
                Ok(Ok(mirror)) if mirror.data_public() == key_public => mirror,
                _ => config,
            }
        };
        if key_public != config.data_public() {
            return Err(StoreError::KeyMismatch {
                expected: config.data_public().fingerprint(),
                found: key_public.fingerprint(),
            });
        }
        Ok(Self::assemble(Core { backend, config, access }))
    }
}

/// One key file of the repository (`keys/<id>`), as `key list` shows it.
#[derive(Clone, Debug)]
pub struct KeyFileInfo {
    pub path: String,
    /// The KDF parameters it was sealed with (None if it cannot be parsed).
    pub kdf: Option<KdfParams>,
    /// Whether the passphrase in use opens it.
    pub current: bool,
    /// Why it cannot be read or opened, if so.
    pub problem: Option<String>,
}

impl Repository {
    /// Every key file, and whether `passphrase` opens it (an argon2 derivation each).
    pub fn key_files(&self, passphrase: &[u8]) -> Result<Vec<KeyFileInfo>> {
        let backend = self.core.backend.as_ref();
        let mut out = Vec::new();
        for path in backend.list("keys")? {
            let Some(name) = id_of_path(&path) else { continue };
            let info = match get_verified(backend, &path, &name) {
                Err(e) => KeyFileInfo { path, kdf: None, current: false, problem: Some(e.to_string()) },
                Ok(bytes) => match parse_key_file(&bytes) {
                    Err(e) => KeyFileInfo { path, kdf: None, current: false, problem: Some(e.to_string()) },
                    Ok((kdf, _)) => match open_key_file(&bytes, passphrase) {
                        Ok(_) => KeyFileInfo { path, kdf: Some(kdf), current: true, problem: None },
                        Err(bakare_crypto::CryptoError::WrongPassphrase) => {
                            KeyFileInfo { path, kdf: Some(kdf), current: false, problem: None }
                        }
                        Err(e) => KeyFileInfo { path, kdf: Some(kdf), current: false, problem: Some(e.to_string()) },
                    },
                },
            };
            out.push(info);
        }
        Ok(out)
    }

    /// Seals the master key under another passphrase: two key files, as `init` writes.
    pub fn add_key(&self, passphrase: &[u8], kdf: KdfParams) -> Result<Vec<String>> {
        let master = self.core.access.master()?;
        let mut paths = Vec::new();
        for _ in 0..2 {
            let key_file = seal_key_file(master, passphrase, kdf)?;
            let path = format!("keys/{}", bakare_crypto::checksum(&key_file));
            self.core.backend.put(&path, &key_file)?;
            paths.push(path);
        }
        Ok(paths)
    }

    /// Deletes one key file; refuses the last one that opens.
    pub fn remove_key_file(&self, path: &str, all: &[KeyFileInfo]) -> Result<()> {
        let others = all.iter().filter(|k| k.path != path && k.problem.is_none()).count();
        if others == 0 {
            return Err(StoreError::LastKey { path: path.to_string() });
        }
        Ok(self.core.backend.delete(path)?)
    }
}
