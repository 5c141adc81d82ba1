//! Feeds arbitrary bytes to the payload codec (`kernel::codec`): decoding them as a stored
//! payload (format byte, zstd, AES-GCM frame) must never panic, and a forged encrypted payload
//! never opens. The same bytes, split into associated data and a plaintext, must come back
//! unchanged through encode then decode, under every combination of compression and
//! encryption, and an encrypted payload with any byte after its format byte changed, or read
//! under other associated data, must fail to open.

#![no_main]

use std::sync::{Arc, LazyLock};

use futures::executor::block_on;
use kernel::adapters::memory::MemoryKeyStore;
use kernel::codec::{is_encrypted, Aad, Codec, CodecSettings, MasterKey, MAX_PAYLOAD_BYTES};
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

/// The one key id every input uses: a key id per input would grow the key store without bound.
const KEY_ID: &str = "fuzz/1";
const RAW_AAD: Aad<'static> = Aad {
    aggregate_id: "1",
    sequence: 1,
    event_id: Uuid::nil(),
};

/// One codec per (compression, encryption) setting, indexed by `compression | encryption << 1`,
/// over one key store whose data key for `KEY_ID` exists, so arbitrary encrypted input reaches
/// the AES-GCM decrypt rather than stopping at "no key". The memory key store never waits,
/// so `block_on` needs no runtime.
static CODECS: LazyLock<[Codec; 4]> = LazyLock::new(|| {
    let keys = Arc::new(MemoryKeyStore::new());
    let master = MasterKey::from_bytes([7; 32]);
    let codecs = [0, 1, 2, 3].map(|setting: u8| {
        Codec::new(
            keys.clone(),
            master.clone(),
            CodecSettings {
                compression_enabled: setting & 1 != 0,
                // Compress everything, so small fuzz inputs reach zstd too.
                compress_threshold: 0,
                zstd_level: 3,
                encryption_enabled: setting & 2 != 0,
            },
        )
    });
    block_on(codecs[3].encode(KEY_ID, &RAW_AAD, b"{}")).expect("creating the data key");
    codecs
});

fuzz_target!(|data: &[u8]| {
    decode_stored(data);
    round_trip(data);
});

/// The whole input as a stored payload.
fn decode_stored(data: &[u8]) {
    let decoded = block_on(CODECS[3].decode(KEY_ID, &RAW_AAD, data));
    if is_encrypted(data) {
        assert!(decoded.is_err(), "a forged encrypted payload opened");
    }
    if let Ok(plain) = decoded {
        assert!(plain.len() <= MAX_PAYLOAD_BYTES);
        // Format 0x10 is version 1, no flags: the rest is the payload itself.
        if data[0] == 0x10 {
            assert_eq!(plain, &data[1..]);
        }
    }
}

/// The input as (setting, sequence, event id, aggregate id, plaintext): encode, then decode.
fn round_trip(data: &[u8]) {
    let mut input = Input(data);
    let setting = input.byte();
    let sequence = u64::from_le_bytes(input.array());
    let event_id = Uuid::from_bytes(input.array());
    let id_len = usize::from(input.byte() % 64);
    let aggregate_id = String::from_utf8_lossy(input.take(id_len)).into_owned();
    let tamper_at = usize::from(u16::from_le_bytes(input.array()));
    let plaintext = input.0;

    let codec = &CODECS[usize::from(setting & 3)];
    let aad = Aad {
        aggregate_id: &aggregate_id,
        sequence,
        event_id,
    };
    let encoded = block_on(codec.encode(KEY_ID, &aad, plaintext)).expect("encode");
    let encrypted = codec.settings().encryption_enabled;
    assert_eq!(is_encrypted(&encoded), encrypted);
    let decoded = block_on(codec.decode(KEY_ID, &aad, &encoded)).expect("decode what we encoded");
    assert_eq!(decoded, plaintext, "round trip changed the payload");

    if encrypted {
        let moved = Aad {
            sequence: sequence.wrapping_add(1),
            ..aad
        };
        assert!(
            block_on(codec.decode(KEY_ID, &moved, &encoded)).is_err(),
            "opened under another sequence"
        );
        // Not the format byte: clearing its encrypted flag makes a (garbage) plain payload.
        let mut altered = encoded.clone();
        let at = 1 + tamper_at % (altered.len() - 1);
        altered[at] ^= 1 << (setting >> 5);
        assert!(
            block_on(codec.decode(KEY_ID, &aad, &altered)).is_err(),
            "opened with byte {at} altered"
        );
    }
}

/// Reads fixed-size parts off the front of the input, zero-padded when it runs out.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take(&mut self, len: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        let head = self.take(N);
        out[..head.len()].copy_from_slice(head);
        out
    }

    fn byte(&mut self) -> u8 {
        self.array::<1>()[0]
    }
}
