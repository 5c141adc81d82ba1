//! Properties of the payload codec (round trips, binding to the event, tamper and garbage
//! resistance, key wrapping) and the `Codec` service over the in-process key store.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use kernel::adapters::memory::MemoryKeyStore;
use kernel::codec::{
    self, is_encrypted, open, seal, Aad, Codec, CodecError, CodecSettings, DataKey, MasterKey,
    MAX_PAYLOAD_BYTES,
};
use kernel::ports::KeyStore;
use kernel::{KernelError, KernelResult};
use proptest::prelude::*;
use uuid::Uuid;

/// Arbitrary bytes, or JSON with repetition (so compression kicks in), up to 4 KiB.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..4096),
        proptest::collection::vec(("[a-z]{1,12}", any::<i64>(), "[ -~]{0,40}"), 0..60).prop_map(
            |fields| {
                let items: Vec<serde_json::Value> = fields
                    .into_iter()
                    .map(|(k, n, s)| serde_json::json!({ "key": k, "n": n, "text": s }))
                    .collect();
                let mut bytes = serde_json::to_vec(&items).expect("JSON of plain values");
                bytes.truncate(4095);
                bytes
            }
        ),
    ]
}

fn settings() -> impl Strategy<Value = CodecSettings> {
    (
        any::<bool>(),
        prop_oneof![Just(0usize), Just(16), Just(512), 0usize..4096],
        prop_oneof![
            Just(-5),
            Just(-1),
            Just(1),
            Just(3),
            Just(9),
            Just(19),
            Just(22)
        ],
        any::<bool>(),
    )
        .prop_map(
            |(compression_enabled, compress_threshold, zstd_level, encryption_enabled)| {
                CodecSettings {
                    compression_enabled,
                    compress_threshold,
                    zstd_level,
                    encryption_enabled,
                }
            },
        )
}

fn encrypting() -> CodecSettings {
    CodecSettings {
        compression_enabled: true,
        compress_threshold: 64,
        zstd_level: 3,
        encryption_enabled: true,
    }
}

#[derive(Debug, Clone)]
struct OwnedAad {
    aggregate_id: String,
    sequence: u64,
    event_id: Uuid,
}

impl OwnedAad {
    fn aad(&self) -> Aad<'_> {
        Aad {
            aggregate_id: &self.aggregate_id,
            sequence: self.sequence,
            event_id: self.event_id,
        }
    }
}

fn owned_aad() -> impl Strategy<Value = OwnedAad> {
    ("[a-zA-Z0-9/:-]{0,40}", any::<u64>(), any::<u128>()).prop_map(|(id, sequence, e)| OwnedAad {
        aggregate_id: id,
        sequence,
        event_id: Uuid::from_u128(e),
    })
}

proptest! {
    #[test]
    fn round_trips_under_every_setting(json in payload(), s in settings(), a in owned_aad()) {
        let key = DataKey::generate();
        let sealed = seal(Some(&key), &a.aad(), &json, &s).unwrap();
        prop_assert_eq!(is_encrypted(&sealed), s.encryption_enabled);
        prop_assert_eq!(open(Some(&key), &a.aad(), &sealed).unwrap(), json.clone());
        if !s.encryption_enabled {
            // Plain payloads need no key, and sealing them needs none either.
            prop_assert_eq!(open(None, &a.aad(), &sealed).unwrap(), json.clone());
            prop_assert_eq!(seal(None, &a.aad(), &json, &s).unwrap().len(), sealed.len());
        }
    }

    #[test]
    fn a_ciphertext_moved_to_another_event_fails(
        json in payload(),
        a in owned_aad(),
        which in 0..3u8,
        other_id in "[a-z]{1,8}",
        other_seq in any::<u64>(),
        other_event in any::<u128>(),
    ) {
        let key = DataKey::generate();
        let sealed = seal(Some(&key), &a.aad(), &json, &encrypting()).unwrap();
        let mut moved = a.clone();
        match which {
            0 => moved.aggregate_id.push_str(&other_id),
            1 => moved.sequence = if other_seq == a.sequence { other_seq.wrapping_add(1) } else { other_seq },
            _ => {
                let e = Uuid::from_u128(other_event);
                moved.event_id = if e == a.event_id { Uuid::from_u128(other_event.wrapping_add(1)) } else { e };
            }
        }
        prop_assert_eq!(open(Some(&key), &moved.aad(), &sealed), Err(CodecError::Decrypt));
        // And another aggregate's key does not open it either.
        prop_assert_eq!(open(Some(&DataKey::generate()), &a.aad(), &sealed), Err(CodecError::Decrypt));
    }

    #[test]
    fn a_flipped_bit_fails(json in payload(), a in owned_aad(), at in any::<prop::sample::Index>(), bit in 0..8u8) {
        let key = DataKey::generate();
        let mut sealed = seal(Some(&key), &a.aad(), &json, &encrypting()).unwrap();
        let i = at.index(sealed.len());
        sealed[i] ^= 1 << bit;
        prop_assert!(open(Some(&key), &a.aad(), &sealed).is_err());
    }

    #[test]
    fn garbage_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
        format in prop_oneof![Just(None), (0u8..=255).prop_map(Some)],
        a in owned_aad(),
    ) {
        let mut input = bytes;
        if let Some(format) = format {
            input.insert(0, format);
        }
        let key = DataKey::generate();
        let _ = open(Some(&key), &a.aad(), &input);
        let _ = open(None, &a.aad(), &input);
    }

    #[test]
    fn truncated_compressed_frames_fail_cleanly(json in payload(), cut in any::<prop::sample::Index>(), a in owned_aad()) {
        let s = CodecSettings { encryption_enabled: false, compress_threshold: 0, ..encrypting() };
        let sealed = seal(None, &a.aad(), &json, &s).unwrap();
        let end = cut.index(sealed.len());
        let _ = open(None, &a.aad(), &sealed[..end]);
    }

    #[test]
    fn wrapped_keys_stay_with_their_key_id_and_master(id in "[a-z]{1,10}/[a-z0-9]{1,20}", other in "[a-z]{1,10}/[a-z0-9]{1,20}") {
        prop_assume!(id != other);
        let master = MasterKey::generate();
        let key = DataKey::generate();
        let wrapped = key.wrap(&master, &id);
        let unwrapped = DataKey::unwrap(&master, &id, &wrapped).unwrap();
        let a = OwnedAad { aggregate_id: "x".into(), sequence: 1, event_id: Uuid::nil() };
        let sealed = seal(Some(&key), &a.aad(), b"{}", &encrypting()).unwrap();
        prop_assert_eq!(open(Some(&unwrapped), &a.aad(), &sealed).unwrap(), b"{}".to_vec());
        prop_assert_eq!(DataKey::unwrap(&master, &other, &wrapped).unwrap_err(), CodecError::Unwrap);
        prop_assert_eq!(DataKey::unwrap(&MasterKey::generate(), &id, &wrapped).unwrap_err(), CodecError::Unwrap);
    }
}

#[test]
fn wrapped_key_garbage_is_rejected() {
    let master = MasterKey::generate();
    let wrapped = DataKey::generate().wrap(&master, "user/1");
    assert_eq!(
        DataKey::unwrap(&master, "user/1", &wrapped[..wrapped.len() - 1]).unwrap_err(),
        CodecError::BadWrappedKey
    );
    assert_eq!(
        DataKey::unwrap(&master, "user/1", &[]).unwrap_err(),
        CodecError::BadWrappedKey
    );
}

#[test]
fn decompression_bombs_are_capped() {
    let aad = Aad {
        aggregate_id: "a",
        sequence: 1,
        event_id: Uuid::nil(),
    };
    // A few kilobytes that expand past the cap: format byte "v1, compressed" then a zstd frame.
    let zeros = vec![0u8; MAX_PAYLOAD_BYTES + 1];
    let mut bomb = vec![0x11];
    bomb.extend(zstd::bulk::compress(&zeros, 1).unwrap());
    assert!(bomb.len() < 64 * 1024, "bomb is {} bytes", bomb.len());
    assert_eq!(
        open(None, &aad, &bomb),
        Err(CodecError::TooLarge {
            limit: MAX_PAYLOAD_BYTES
        })
    );
    // And the codec refuses to seal what it could not open.
    assert_eq!(
        seal(None, &aad, &zeros, &CodecSettings::default()),
        Err(CodecError::TooLarge {
            limit: MAX_PAYLOAD_BYTES
        })
    );
}

#[test]
fn format_errors_are_specific() {
    let aad = Aad {
        aggregate_id: "a",
        sequence: 1,
        event_id: Uuid::nil(),
    };
    assert_eq!(open(None, &aad, &[]), Err(CodecError::Truncated));
    assert_eq!(
        open(None, &aad, &[0x20]),
        Err(CodecError::UnknownFormat(0x20))
    );
    assert_eq!(
        open(None, &aad, &[0x14]),
        Err(CodecError::UnknownFormat(0x14))
    );
    assert_eq!(open(None, &aad, &[0x12, 1, 2]), Err(CodecError::MissingKey));
    let key = DataKey::generate();
    assert_eq!(
        open(Some(&key), &aad, &[0x12, 1, 2]),
        Err(CodecError::Truncated)
    );
    assert_eq!(
        seal(None, &aad, b"{}", &encrypting()),
        Err(CodecError::MissingKey)
    );
    // Small payloads stay uncompressed even when compression is on.
    let small = seal(Some(&key), &aad, b"{}", &encrypting()).unwrap();
    assert_eq!(small[0], 0x12);
    let big = seal(Some(&key), &aad, &[b' '; 1000], &encrypting()).unwrap();
    assert_eq!(big[0], 0x13);
}

#[test]
fn master_keys_parse_and_never_print() {
    let master = MasterKey::generate();
    let parsed = MasterKey::from_base64(&master.to_base64()).unwrap();
    let wrapped = DataKey::generate().wrap(&master, "k");
    assert!(DataKey::unwrap(&parsed, "k", &wrapped).is_ok());
    assert!(matches!(
        MasterKey::from_base64("c2hvcnQ="),
        Err(CodecError::BadMasterKey(_))
    ));
    assert!(matches!(
        MasterKey::from_base64("not base64!"),
        Err(CodecError::BadMasterKey(_))
    ));
    assert_eq!(format!("{master:?}"), "MasterKey(**redacted**)");
    assert_eq!(
        format!("{:?}", DataKey::generate()),
        "DataKey(**redacted**)"
    );
}

#[test]
fn settings_deserialize_with_defaults() {
    let s: CodecSettings = serde_json::from_str(r#"{"zstd_level": 5}"#).unwrap();
    assert_eq!(
        s,
        CodecSettings {
            zstd_level: 5,
            ..CodecSettings::default()
        }
    );
    assert_eq!(s.compress_threshold, 512);
    assert!(serde_json::from_str::<CodecSettings>(r#"{"zstd_levle": 5}"#).is_err());
}

/// Counts key store reads, to show the hot path does no I/O.
#[derive(Default)]
struct CountingKeys {
    inner: MemoryKeyStore,
    gets: AtomicUsize,
}

#[async_trait]
impl KeyStore for CountingKeys {
    async fn get(&self, key_id: &str) -> KernelResult<Option<Vec<u8>>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key_id).await
    }
    async fn put_if_absent(&self, key_id: &str, wrapped: &[u8]) -> KernelResult<Vec<u8>> {
        self.inner.put_if_absent(key_id, wrapped).await
    }
    async fn forget(&self, key_id: &str) -> KernelResult<bool> {
        self.inner.forget(key_id).await
    }
    async fn key_ids_for(&self, aggregate_id: &str) -> KernelResult<Vec<String>> {
        self.inner.key_ids_for(aggregate_id).await
    }
}

fn aad(id: &str, sequence: u64) -> Aad<'_> {
    Aad {
        aggregate_id: id,
        sequence,
        event_id: Uuid::from_u128(sequence as u128),
    }
}

#[tokio::test]
async fn codec_round_trips_and_caches_keys() {
    let keys = Arc::new(CountingKeys::default());
    let codec = Codec::new(
        keys.clone(),
        MasterKey::generate(),
        CodecSettings::default(),
    );
    let key_id = codec::key_id("user", "u1");
    assert_eq!(key_id, "user/u1");
    let json = br#"{"name":"Ada"}"#;
    let sealed = codec.encode(&key_id, &aad("u1", 1), json).await.unwrap();
    assert!(is_encrypted(&sealed));
    let gets = keys.gets.load(Ordering::SeqCst);
    for seq in 2..10 {
        let sealed = codec.encode(&key_id, &aad("u1", seq), json).await.unwrap();
        assert_eq!(
            codec
                .decode(&key_id, &aad("u1", seq), &sealed)
                .await
                .unwrap(),
            json
        );
    }
    assert_eq!(
        keys.gets.load(Ordering::SeqCst),
        gets,
        "hot path hit the key store"
    );
    assert_eq!(
        codec.decode(&key_id, &aad("u1", 1), &sealed).await.unwrap(),
        json
    );
    assert_eq!(keys.inner.key_ids_for("u1").await.unwrap(), vec![key_id]);
}

#[tokio::test]
async fn forget_shreds_reads_and_writes() {
    let keys = Arc::new(MemoryKeyStore::new());
    let codec = Codec::new(
        keys.clone(),
        MasterKey::generate(),
        CodecSettings::default(),
    );
    let key_id = codec::key_id("user", "u1");
    let sealed = codec.encode(&key_id, &aad("u1", 1), b"{}").await.unwrap();
    let plain = codec::seal(
        None,
        &aad("u1", 2),
        b"[1]",
        &CodecSettings {
            encryption_enabled: false,
            ..CodecSettings::default()
        },
    )
    .unwrap();

    assert!(codec.forget(&key_id).await.unwrap());
    assert!(!codec.forget(&key_id).await.unwrap());
    match codec.decode(&key_id, &aad("u1", 1), &sealed).await {
        Err(KernelError::Forgotten(id)) => assert_eq!(id, key_id),
        other => panic!("expected Forgotten, got {other:?}"),
    }
    assert!(matches!(
        codec.encode(&key_id, &aad("u1", 3), b"{}").await,
        Err(KernelError::Forgotten(_))
    ));
    // Unencrypted rows need no key, forgotten or not.
    assert_eq!(
        codec.decode(&key_id, &aad("u1", 2), &plain).await.unwrap(),
        b"[1]"
    );
    // Another codec over the same store (another process) cannot read it either.
    let other = Codec::new(keys, MasterKey::generate(), CodecSettings::default());
    assert!(matches!(
        other.decode(&key_id, &aad("u1", 1), &sealed).await,
        Err(KernelError::Forgotten(_))
    ));
}

#[tokio::test]
async fn an_encrypted_payload_without_a_stored_key_is_forgotten() {
    let codec = Codec::new(
        Arc::new(MemoryKeyStore::new()),
        MasterKey::generate(),
        CodecSettings::default(),
    );
    let sealed = seal(
        Some(&DataKey::generate()),
        &aad("u9", 1),
        b"{}",
        &encrypting(),
    )
    .unwrap();
    assert!(matches!(
        codec.decode("user/u9", &aad("u9", 1), &sealed).await,
        Err(KernelError::Forgotten(_))
    ));
}

#[tokio::test]
async fn settings_can_change_without_breaking_old_rows() {
    let keys: Arc<dyn KeyStore> = Arc::new(MemoryKeyStore::new());
    let master = MasterKey::from_base64(&MasterKey::generate().to_base64()).unwrap();
    let plain = Codec::new(
        keys.clone(),
        master.clone(),
        CodecSettings {
            compression_enabled: false,
            encryption_enabled: false,
            ..CodecSettings::default()
        },
    );
    let full = Codec::new(keys, master, CodecSettings::default());
    let json = serde_json::to_vec(&vec!["padding"; 200]).unwrap();
    let old = plain.encode("user/u1", &aad("u1", 1), &json).await.unwrap();
    let new = full.encode("user/u1", &aad("u1", 2), &json).await.unwrap();
    assert!(!is_encrypted(&old) && is_encrypted(&new));
    assert_eq!(
        full.decode("user/u1", &aad("u1", 1), &old).await.unwrap(),
        json
    );
    assert_eq!(
        plain.decode("user/u1", &aad("u1", 2), &new).await.unwrap(),
        json
    );
}

#[tokio::test]
async fn concurrent_first_use_agrees_on_one_key() {
    let keys: Arc<dyn KeyStore> = Arc::new(MemoryKeyStore::new());
    let master = MasterKey::generate();
    let codecs: Vec<Arc<Codec>> = (0..8)
        .map(|_| {
            Arc::new(Codec::new(
                keys.clone(),
                master.clone(),
                CodecSettings::default(),
            ))
        })
        .collect();
    let tasks: Vec<_> = codecs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let c = c.clone();
            tokio::spawn(async move {
                c.encode("order/o1", &aad("o1", i as u64), b"{}")
                    .await
                    .unwrap()
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let sealed = task.await.unwrap();
        for c in &codecs {
            assert_eq!(
                c.decode("order/o1", &aad("o1", i as u64), &sealed)
                    .await
                    .unwrap(),
                b"{}"
            );
        }
    }
}
