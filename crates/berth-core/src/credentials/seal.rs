//! Credentials at rest: every stored record is sealed with XChaCha20-Poly1305 under a key
//! ops keep outside the data dir (a file or an environment variable), so a copied data
//! dir reveals no token. Each sealed record names the key that sealed it (an id derived
//! from the key, never the key), which makes rotation plain: the new key seals, the old
//! ones still open what they sealed until [`super::CredentialBook::reseal`] has moved
//! every record to the new key.
//!
//! A record is bound to its shop (the shop name is the AEAD's associated data): a record
//! moved to another shop's key does not open.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// Marks a sealed record and its layout: magic, key id (8 bytes), nonce (24), ciphertext.
const MAGIC: &[u8; 4] = b"bsl1";
const ID_LEN: usize = 8;
const NONCE_LEN: usize = 24;

/// Where a key comes from: 64 hex digits (32 bytes), in a file or an environment
/// variable (`openssl rand -hex 32` makes one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    Env(String),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "key file {}", p.display()),
            KeySource::Env(n) => write!(f, "environment variable {n}"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("{from}: {why} (a key is 64 hex digits, e.g. from `openssl rand -hex 32`)")]
    BadKey { from: String, why: String },
    #[error("the record was sealed with key {id}, which is not configured (add it to the previous keys until every record is resealed)")]
    UnknownKey { id: String },
    #[error("the record does not open with key {id}: it was changed, or belongs to another shop")]
    Tampered { id: String },
    #[error("the record is not sealed (written by a berth without credential encryption, or damaged)")]
    NotSealed,
}

struct Key {
    id: [u8; ID_LEN],
    cipher: XChaCha20Poly1305,
}

impl Key {
    fn new(bytes: &[u8; 32]) -> Key {
        let digest = Sha256::new().chain_update(b"berth credential key id\0").chain_update(bytes).finalize();
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&digest[..ID_LEN]);
        Key { id, cipher: XChaCha20Poly1305::new(bytes.into()) }
    }
}

/// The key that seals, and the keys that still open what they sealed.
pub struct Sealer {
    current: Key,
    previous: Vec<Key>,
}

/// What [`Sealer::open`] found.
pub struct Opened {
    pub plain: Vec<u8>,
    /// Sealed with a previous key: reseal it with the current one.
    pub stale: bool,
}

impl Sealer {
    pub fn new(current: &[u8; 32], previous: &[[u8; 32]]) -> Sealer {
        Sealer { current: Key::new(current), previous: previous.iter().map(Key::new).collect() }
    }

    /// Read the current key and the previous ones from where config says.
    pub fn load(current: &KeySource, previous: &[KeySource]) -> Result<Sealer, SealError> {
        let current = read_key(current)?;
        let previous = previous.iter().map(read_key).collect::<Result<Vec<_>, _>>()?;
        Ok(Sealer::new(&current, &previous))
    }

    /// The current key's id (hex), as records and logs name it.
    pub fn key_id(&self) -> String {
        hex::encode(self.current.id)
    }

    pub fn seal(&self, context: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::Rng::fill(&mut rand::thread_rng(), &mut nonce[..]);
        let sealed = self
            .current
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad: context })
            .expect("XChaCha20-Poly1305 seals any length berth stores");
        let mut out = Vec::with_capacity(MAGIC.len() + ID_LEN + NONCE_LEN + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.current.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Opened, SealError> {
        let rest = sealed.strip_prefix(MAGIC.as_slice()).ok_or(SealError::NotSealed)?;
        if rest.len() < ID_LEN + NONCE_LEN {
            return Err(SealError::NotSealed);
        }
        let (id, rest) = rest.split_at(ID_LEN);
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let (key, stale) = if id == self.current.id {
            (&self.current, false)
        } else {
            let key = self.previous.iter().find(|k| k.id == id).ok_or_else(|| SealError::UnknownKey { id: hex::encode(id) })?;
            (key, true)
        };
        let plain = key
            .cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad: context })
            .map_err(|_| SealError::Tampered { id: hex::encode(id) })?;
        Ok(Opened { plain, stale })
    }
}

fn read_key(source: &KeySource) -> Result<[u8; 32], SealError> {
    let bad = |why: String| SealError::BadKey { from: source.to_string(), why };
    let text = match source {
        KeySource::File(p) => std::fs::read_to_string(p).map_err(|e| bad(format!("cannot be read: {e}")))?,
        KeySource::Env(name) => std::env::var(name).map_err(|_| bad("is not set".into()))?,
    };
    let bytes = hex::decode(text.trim()).map_err(|_| bad("is not hex".into()))?;
    bytes.try_into().map_err(|b: Vec<u8>| bad(format!("has {} bytes, not 32", b.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_binds_to_the_shop_and_rotates() {
        let (old, new) = ([7u8; 32], [9u8; 32]);
        let before = Sealer::new(&old, &[]);
        let sealed = before.seal(b"acme", b"token-abc");
        assert!(!sealed.windows(9).any(|w| w == b"token-abc"), "the token is not in the sealed bytes");
        assert_eq!(before.open(b"acme", &sealed).unwrap().plain, b"token-abc");
        assert_eq!(before.open(b"globex", &sealed).err(), Some(SealError::Tampered { id: before.key_id() }), "bound to its shop");
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(before.open(b"acme", &flipped), Err(SealError::Tampered { .. })));
        // Rotation: the new key seals, the old one still opens what it sealed.
        let rotated = Sealer::new(&new, &[old]);
        let opened = rotated.open(b"acme", &sealed).unwrap();
        assert!(opened.stale && opened.plain == b"token-abc");
        assert!(!rotated.open(b"acme", &rotated.seal(b"acme", b"x")).unwrap().stale);
        // Without the old key: which key is missing, said plainly.
        let only_new = Sealer::new(&new, &[]);
        assert_eq!(only_new.open(b"acme", &sealed).err(), Some(SealError::UnknownKey { id: before.key_id() }));
        assert_eq!(only_new.open(b"acme", b"{\"plain\":1}").err(), Some(SealError::NotSealed));
    }

    #[test]
    fn keys_come_from_a_file_or_the_environment_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
        let from_file = Sealer::load(&KeySource::File(path.clone()), &[]).unwrap();
        assert_eq!(from_file.key_id(), Sealer::new(&[0xab; 32], &[]).key_id());
        std::fs::write(&path, "ab".repeat(16)).unwrap();
        let err = Sealer::load(&KeySource::File(path.clone()), &[]).err().unwrap();
        assert_eq!(err.to_string(), format!("key file {}: has 16 bytes, not 32 (a key is 64 hex digits, e.g. from `openssl rand -hex 32`)", path.display()));
        let err = Sealer::load(&KeySource::Env("BERTH_TEST_KEY_THAT_IS_NOT_SET".into()), &[]).err().unwrap();
        assert!(err.to_string().starts_with("environment variable BERTH_TEST_KEY_THAT_IS_NOT_SET: is not set"), "{err}");
    }
}
