//! The payload codec: JSON bytes in, then zstd above a size threshold, then AES-256-GCM
//! under a per-aggregate data key that is wrapped by the master key.
//!
//! Wire format: one format byte (version in the high nibble, flags in the low nibble:
//! compressed, encrypted), then for encrypted payloads a 12-byte random nonce and the
//! ciphertext with its tag, else the (possibly compressed) JSON. Decoding reads only the format
//! byte, so changing the settings never breaks old rows. The associated data binds a
//! ciphertext to its aggregate id, sequence, event id and format byte, so a payload copied onto
//! another event, or with a flipped flag, fails to decrypt.

use std::cell::RefCell;
use std::io::Read;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use lru::LruCache;
use parking_lot::Mutex;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

use crate::envelope::NewDataKey;
use crate::error::{KernelError, KernelResult};
use crate::ports::KeyStore;

/// The current wire version, in the high nibble of the format byte.
const VERSION: u8 = 1;
const FLAG_COMPRESSED: u8 = 0b0001;
const FLAG_ENCRYPTED: u8 = 0b0010;
const KNOWN_FLAGS: u8 = FLAG_COMPRESSED | FLAG_ENCRYPTED;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;

/// The largest payload the codec seals, and the most a compressed payload may expand to.
/// Guards against decompression bombs.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;
/// zstd windows above 2^24 are refused when decompressing (our compressor never needs more,
/// see `clamp_level`), so a crafted frame cannot make the decoder allocate a huge window.
const WINDOW_LOG_MAX: u32 = 24;

/// Wrapped data key: version byte, nonce, ciphertext of the 32-byte key, tag.
const WRAP_VERSION: u8 = 1;
const WRAPPED_LEN: usize = 1 + NONCE_LEN + KEY_LEN + TAG_LEN;
const WRAP_AAD_TAG: &[u8] = b"quintet/data-key/v1\0";

/// How many unwrapped data keys the codec keeps in memory by default.
pub const DEFAULT_KEY_CACHE_CAPACITY: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    #[error("payload is truncated")]
    Truncated,
    #[error("unknown payload format byte 0x{0:02x}")]
    UnknownFormat(u8),
    #[error("payload failed to decrypt (wrong key, or it was moved or altered)")]
    Decrypt,
    #[error("payload failed to encrypt")]
    Encrypt,
    #[error("payload failed to compress: {0}")]
    Compress(String),
    #[error("payload failed to decompress: {0}")]
    Decompress(String),
    #[error("payload is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("a data key is required for an encrypted payload")]
    MissingKey,
    #[error("bad master key: {0}")]
    BadMasterKey(String),
    #[error("wrapped data key is malformed")]
    BadWrappedKey,
    #[error("data key failed to unwrap (wrong master key or key id)")]
    Unwrap,
}

/// Codec settings, embedded in the configuration. Decoding never depends on them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CodecSettings {
    pub compression_enabled: bool,
    /// Payloads longer than this many bytes are compressed.
    pub compress_threshold: usize,
    /// zstd level; clamped to -5..=19 (levels above 19 need windows the decoder refuses).
    pub zstd_level: i32,
    pub encryption_enabled: bool,
}

impl Default for CodecSettings {
    fn default() -> Self {
        Self {
            compression_enabled: true,
            compress_threshold: 512,
            // Fast mode: event payloads are small, and for them zstd's levels >= 1 spend most
            // of their time building Huffman tables (benches/RESULTS.md, codec).
            zstd_level: -1,
            encryption_enabled: true,
        }
    }
}

/// The master key that wraps every data key. Never printed.
#[derive(Clone)]
pub struct MasterKey([u8; KEY_LEN]);

impl MasterKey {
    /// Parses standard base64 of exactly 32 bytes.
    pub fn from_base64(encoded: &str) -> Result<Self, CodecError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| CodecError::BadMasterKey(format!("not base64: {e}")))?;
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|b: Vec<u8>| {
            CodecError::BadMasterKey(format!("expected {KEY_LEN} bytes, got {}", b.len()))
        })?;
        Ok(Self(key))
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    pub fn generate() -> Self {
        Self(random_key())
    }

    /// Standard base64, for writing a generated key into a configuration.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.0))
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(**redacted**)")
    }
}

/// A per-aggregate data key, with its AES key schedule expanded once (keys are cached and
/// used for many payloads). Never printed.
#[derive(Clone)]
pub struct DataKey {
    key: [u8; KEY_LEN],
    cipher: Aes256Gcm,
}

impl DataKey {
    pub fn generate() -> Self {
        Self::from_bytes(random_key())
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)),
            key: bytes,
        }
    }

    /// Encrypts this key under the master key. The key id is the associated data, so a wrapped
    /// key copied to another key id does not unwrap.
    pub fn wrap(&self, master: &MasterKey, key_id: &str) -> Vec<u8> {
        let nonce = random_nonce();
        let aad = wrap_aad(key_id);
        let sealed = master
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &self.key,
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption of 32 bytes cannot fail");
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.push(WRAP_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    pub fn unwrap(master: &MasterKey, key_id: &str, wrapped: &[u8]) -> Result<Self, CodecError> {
        if wrapped.len() != WRAPPED_LEN || wrapped[0] != WRAP_VERSION {
            return Err(CodecError::BadWrappedKey);
        }
        let (nonce, sealed) = wrapped[1..].split_at(NONCE_LEN);
        let aad = wrap_aad(key_id);
        let plain = master
            .cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| CodecError::Unwrap)?;
        let key: [u8; KEY_LEN] = plain.try_into().map_err(|_| CodecError::BadWrappedKey)?;
        Ok(Self::from_bytes(key))
    }

    fn cipher(&self) -> &Aes256Gcm {
        &self.cipher
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(**redacted**)")
    }
}

/// What a payload ciphertext is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aad<'a> {
    pub aggregate_id: &'a str,
    pub sequence: u64,
    pub event_id: Uuid,
}

impl Aad<'_> {
    /// Format byte, length-prefixed aggregate id, sequence, event id: unambiguous by construction.
    fn encode(&self, format: u8) -> Vec<u8> {
        let id = self.aggregate_id.as_bytes();
        let mut out = Vec::with_capacity(1 + 8 + id.len() + 8 + 16);
        out.push(format);
        out.extend_from_slice(&(id.len() as u64).to_be_bytes());
        out.extend_from_slice(id);
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(self.event_id.as_bytes());
        out
    }
}

/// The key id of an aggregate's data key.
pub fn key_id(aggregate_type: &str, aggregate_id: &str) -> String {
    format!("{aggregate_type}/{aggregate_id}")
}

/// Whether an encoded payload is encrypted (false for anything unreadable).
pub fn is_encrypted(bytes: &[u8]) -> bool {
    bytes
        .first()
        .is_some_and(|b| b >> 4 == VERSION && b & FLAG_ENCRYPTED != 0)
}

/// Encodes JSON bytes: zstd when enabled and over the threshold (and only if it helps),
/// then AES-256-GCM when enabled (`key` is then required). Everything happens in the output
/// buffer: compressed into place behind the header, encrypted in place, the tag appended.
pub fn seal(
    key: Option<&DataKey>,
    aad: &Aad,
    json: &[u8],
    settings: &CodecSettings,
) -> Result<Vec<u8>, CodecError> {
    if json.len() > MAX_PAYLOAD_BYTES {
        return Err(CodecError::TooLarge {
            limit: MAX_PAYLOAD_BYTES,
        });
    }
    let key = if settings.encryption_enabled {
        Some(key.ok_or(CodecError::MissingKey)?)
    } else {
        None
    };
    let nonce = key.map(|_| random_nonce());
    let header = 1 + nonce.map_or(0, |n| n.len());
    let mut out = Vec::with_capacity(header + json.len() + TAG_LEN);
    out.push(0); // the format byte, known once the body is
    if let Some(nonce) = &nonce {
        out.extend_from_slice(nonce);
    }
    let mut flags = 0u8;
    if settings.compression_enabled && json.len() > settings.compress_threshold {
        // Only a result smaller than the input is kept: incompressible payloads are stored
        // as they are.
        out.resize(header + json.len() - 1, 0);
        if let Some(size) =
            compress_into(json, clamp_level(settings.zstd_level), &mut out[header..])?
        {
            out.truncate(header + size);
            flags |= FLAG_COMPRESSED;
        } else {
            out.truncate(header);
        }
    }
    if flags & FLAG_COMPRESSED == 0 {
        out.extend_from_slice(json);
    }
    if let (Some(key), Some(nonce)) = (key, nonce) {
        flags |= FLAG_ENCRYPTED;
        let format = (VERSION << 4) | flags;
        let tag = key
            .cipher()
            .encrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                &aad.encode(format),
                &mut out[header..],
            )
            .map_err(|_| CodecError::Encrypt)?;
        out.extend_from_slice(&tag);
    }
    out[0] = (VERSION << 4) | flags;
    Ok(out)
}

/// Decodes what `seal` produced, guided by the format byte alone.
pub fn open(key: Option<&DataKey>, aad: &Aad, bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
    let (&format, rest) = bytes.split_first().ok_or(CodecError::Truncated)?;
    if format >> 4 != VERSION || format & 0x0f & !KNOWN_FLAGS != 0 {
        return Err(CodecError::UnknownFormat(format));
    }
    let compressed = format & FLAG_COMPRESSED != 0;
    if format & FLAG_ENCRYPTED == 0 {
        return if compressed {
            decompress(rest)
        } else {
            Ok(rest.to_vec())
        };
    }
    let key = key.ok_or(CodecError::MissingKey)?;
    if rest.len() < NONCE_LEN + TAG_LEN {
        return Err(CodecError::Truncated);
    }
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let decrypted = key
        .cipher()
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: &aad.encode(format),
            },
        )
        .map_err(|_| CodecError::Decrypt)?;
    if compressed {
        decompress(&decrypted)
    } else {
        Ok(decrypted)
    }
}

fn clamp_level(level: i32) -> i32 {
    level.clamp(-5, 19)
}

thread_local! {
    // zstd contexts are costly to create (tens of KiB and most of a small payload's time), so
    // each thread keeps one of each. `with_context` resets the session before every use.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DCTX: RefCell<Option<zstd::zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
}

/// Compresses `data` into `out`; `None` when it does not fit (it would not be smaller).
fn compress_into(data: &[u8], level: i32, out: &mut [u8]) -> Result<Option<usize>, CodecError> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let compressor = match &mut *slot {
            Some((l, c)) if *l == level => c,
            _ => {
                let compressor = zstd::bulk::Compressor::new(level)
                    .map_err(|e| CodecError::Compress(e.to_string()))?;
                &mut slot.insert((level, compressor)).1
            }
        };
        match compressor.compress_to_buffer(data, out) {
            Ok(size) => Ok(Some(size)),
            // zstd says "destination buffer is too small": it would not be smaller.
            Err(err) if err.kind() == std::io::ErrorKind::Other => Ok(None),
            Err(err) => Err(CodecError::Compress(err.to_string())),
        }
    })
}

/// Decompresses into a buffer of the size the frame header declares (our compressor always
/// writes it), which a bomb cannot exceed: a frame holding more than it declares fails. A
/// frame that declares no size is streamed, so it stops at the cap instead of allocating its
/// claimed size.
fn decompress(data: &[u8]) -> Result<Vec<u8>, CodecError> {
    let zstd_err =
        |code: usize| CodecError::Decompress(zstd::zstd_safe::get_error_name(code).to_string());
    DCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        let dctx = match &mut *slot {
            Some(dctx) => dctx,
            None => {
                let mut dctx = zstd::zstd_safe::DCtx::create();
                dctx.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(WINDOW_LOG_MAX))
                    .map_err(zstd_err)?;
                slot.insert(dctx)
            }
        };
        if let Ok(Some(declared)) = zstd::zstd_safe::get_frame_content_size(data) {
            let declared = usize::try_from(declared).unwrap_or(usize::MAX);
            if declared > MAX_PAYLOAD_BYTES {
                return Err(CodecError::TooLarge {
                    limit: MAX_PAYLOAD_BYTES,
                });
            }
            let mut out = Vec::with_capacity(declared);
            dctx.decompress(&mut out, data).map_err(zstd_err)?;
            return Ok(out);
        }
        let decoder = zstd::stream::read::Decoder::with_context(data, dctx);
        let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(MAX_PAYLOAD_BYTES));
        decoder
            .take(MAX_PAYLOAD_BYTES as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| CodecError::Decompress(e.to_string()))?;
        if out.len() > MAX_PAYLOAD_BYTES {
            return Err(CodecError::TooLarge {
                limit: MAX_PAYLOAD_BYTES,
            });
        }
        Ok(out)
    })
}

fn wrap_aad(key_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(WRAP_AAD_TAG.len() + key_id.len());
    aad.extend_from_slice(WRAP_AAD_TAG);
    aad.extend_from_slice(key_id.as_bytes());
    aad
}

fn random_key() -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    rand::rngs::OsRng.fill_bytes(&mut key);
    key
}

/// A fresh random nonce from the thread's CSPRNG (ChaCha, seeded and periodically reseeded
/// from the OS): a system call per payload cost more than the rest of a small seal.
fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    nonce
}

/// The codec service: the pure functions plus data keys from the key store, with unwrapped keys
/// kept in a bounded in-process LRU so the hot path does no I/O.
pub struct Codec {
    keys: Arc<dyn KeyStore>,
    master: MasterKey,
    settings: CodecSettings,
    cache: Mutex<LruCache<String, Arc<DataKey>>>,
    /// Bumped by every `forget`; a key loaded before a forget is not cached after it.
    epoch: AtomicU64,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("settings", &self.settings)
            .field("cached_keys", &self.cache.lock().len())
            .finish_non_exhaustive()
    }
}

impl Codec {
    pub fn new(keys: Arc<dyn KeyStore>, master: MasterKey, settings: CodecSettings) -> Self {
        Self::with_cache_capacity(keys, master, settings, DEFAULT_KEY_CACHE_CAPACITY)
    }

    pub fn with_cache_capacity(
        keys: Arc<dyn KeyStore>,
        master: MasterKey,
        settings: CodecSettings,
        capacity: usize,
    ) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            keys,
            master,
            settings,
            cache: Mutex::new(LruCache::new(capacity)),
            epoch: AtomicU64::new(0),
        }
    }

    pub fn settings(&self) -> &CodecSettings {
        &self.settings
    }

    /// The key store behind the codec (for listing an aggregate's key ids).
    pub fn key_store(&self) -> &Arc<dyn KeyStore> {
        &self.keys
    }

    /// Seals a payload, creating the aggregate's data key on first use.
    pub async fn encode(&self, key_id: &str, aad: &Aad<'_>, json: &[u8]) -> KernelResult<Vec<u8>> {
        if !self.settings.encryption_enabled {
            return Ok(seal(None, aad, json, &self.settings)?);
        }
        let key = self.data_key(key_id, true).await?;
        Ok(seal(Some(&key), aad, json, &self.settings)?)
    }

    /// The key that seals a write to `key_id`'s streams. When the store has no key yet, a new
    /// one comes back with its wrapped form, and `new_keys` says where it is stored (see
    /// [`NewKeys`]); one stored with the append is remembered only through
    /// [`Codec::remember`], once that commits.
    pub async fn write_key(&self, key_id: &str, new_keys: NewKeys) -> KernelResult<WriteKey> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        if !self.settings.encryption_enabled {
            return Ok(WriteKey {
                key: None,
                new_key: None,
                epoch,
            });
        }
        let ask_store = match new_keys {
            NewKeys::StoreNow => {
                return Ok(WriteKey {
                    key: Some(self.data_key(key_id, true).await?),
                    new_key: None,
                    epoch,
                })
            }
            NewKeys::WithAppend => true,
            NewKeys::WithAppendUnasked => false,
        };
        if let Some(key) = self.known_key(key_id, ask_store, epoch).await? {
            return Ok(WriteKey {
                key: Some(key),
                new_key: None,
                epoch,
            });
        }
        let key = DataKey::generate();
        let wrapped = key.wrap(&self.master, key_id);
        Ok(WriteKey {
            key: Some(Arc::new(key)),
            new_key: Some(NewDataKey {
                key_id: key_id.to_string(),
                wrapped,
            }),
            epoch,
        })
    }

    /// Caches the key the store holds for `key_id`, if any: after an append that proposed a
    /// new key failed with a conflict, another writer's key is the one the retry must use.
    pub async fn learn(&self, key_id: &str) {
        let epoch = self.epoch.load(Ordering::SeqCst);
        if let Ok(Some(wrapped)) = self.keys.get(key_id).await {
            if let Err(err) = self.cache_unwrapped(key_id, &wrapped, epoch) {
                tracing::warn!(key_id, error = %err, "a stored data key does not unwrap");
            }
        }
    }

    /// Seals a payload with a key from [`Codec::write_key`].
    pub fn seal_with(&self, key: &WriteKey, aad: &Aad<'_>, json: &[u8]) -> KernelResult<Vec<u8>> {
        Ok(seal(key.key.as_deref(), aad, json, &self.settings)?)
    }

    /// Caches a new key once the append that stored it has committed (unless a `forget`
    /// ran since the key was made).
    pub fn remember(&self, key: &WriteKey) {
        let (Some(new_key), Some(data_key)) = (&key.new_key, &key.key) else {
            return;
        };
        let mut cache = self.cache.lock();
        if self.epoch.load(Ordering::SeqCst) == key.epoch {
            cache.put(new_key.key_id.clone(), Arc::clone(data_key));
        }
    }

    /// Opens a payload. Unencrypted payloads need no key; an encrypted one whose key is gone
    /// gives `KernelError::Forgotten`.
    pub async fn decode(&self, key_id: &str, aad: &Aad<'_>, bytes: &[u8]) -> KernelResult<Vec<u8>> {
        if !is_encrypted(bytes) {
            return Ok(open(None, aad, bytes)?);
        }
        let key = self.data_key(key_id, false).await?;
        Ok(open(Some(&key), aad, bytes)?)
    }

    /// Crypto-shreds a key id: deletes its data key and evicts it from the cache.
    pub async fn forget(&self, key_id: &str) -> KernelResult<bool> {
        let deleted = self.keys.forget(key_id).await?;
        // Bump after the store forgot and before evicting: a concurrent load that read the
        // key earlier either inserts before the eviction (and is evicted) or sees the new epoch.
        let mut cache = self.cache.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        cache.pop(key_id);
        Ok(deleted)
    }

    async fn data_key(&self, key_id: &str, create: bool) -> KernelResult<Arc<DataKey>> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        if let Some(key) = self.known_key(key_id, true, epoch).await? {
            return Ok(key);
        }
        if !create {
            return Err(KernelError::Forgotten(key_id.to_string()));
        }
        let wrapped = DataKey::generate().wrap(&self.master, key_id);
        // A concurrent writer may have stored its own key first: use whichever is stored.
        let stored = self.keys.put_if_absent(key_id, &wrapped).await?;
        self.cache_unwrapped(key_id, &stored, epoch)
    }

    /// The key cached for `key_id`, else (when `ask_store`) the one the store holds, now
    /// cached; `None` when neither has one.
    async fn known_key(
        &self,
        key_id: &str,
        ask_store: bool,
        epoch: u64,
    ) -> KernelResult<Option<Arc<DataKey>>> {
        if let Some(key) = self.cache.lock().get(key_id) {
            return Ok(Some(Arc::clone(key)));
        }
        if !ask_store {
            return Ok(None);
        }
        match self.keys.get(key_id).await? {
            Some(wrapped) => Ok(Some(self.cache_unwrapped(key_id, &wrapped, epoch)?)),
            None => Ok(None),
        }
    }

    /// Unwraps a stored key and caches it, unless a `forget` ran since `epoch` was read.
    fn cache_unwrapped(
        &self,
        key_id: &str,
        wrapped: &[u8],
        epoch: u64,
    ) -> KernelResult<Arc<DataKey>> {
        let key = Arc::new(DataKey::unwrap(&self.master, key_id, wrapped)?);
        let mut cache = self.cache.lock();
        if self.epoch.load(Ordering::SeqCst) == epoch {
            cache.put(key_id.to_string(), Arc::clone(&key));
        }
        Ok(key)
    }
}

/// Where [`Codec::write_key`] stores a key it has to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewKeys {
    /// Right away, on its own (the key store is not the event store).
    StoreNow,
    /// In the append's transaction (`AppendBatch::new_keys`); the store is asked first.
    WithAppend,
    /// In the append's transaction without asking first: the stream has no events yet, so
    /// a stored key is rare. A forgotten id still fails in the append (`Forgotten`); another
    /// writer's key makes it a conflict, after which [`Codec::learn`] fetches that key.
    WithAppendUnasked,
}

/// The key a write seals with ([`Codec::write_key`]).
pub struct WriteKey {
    key: Option<Arc<DataKey>>,
    new_key: Option<NewDataKey>,
    epoch: u64,
}

impl WriteKey {
    /// A key the store does not hold yet, to be stored in the append's transaction.
    pub fn new_key(&self) -> Option<&NewDataKey> {
        self.new_key.as_ref()
    }
}
