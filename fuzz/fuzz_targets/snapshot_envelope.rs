//! Feeds arbitrary bytes to the snapshot envelope decode (`kernel::engine::
//! decode_snapshot_envelope`, the bincode decode reading a snapshot does): it must never panic
//! nor allocate past its limit. The same bytes, split into envelope fields and encoded the way
//! writing a snapshot encodes them, must decode to the same fingerprint and sequence, and no
//! strict prefix of an envelope may decode.

#![no_main]

use kernel::engine::decode_snapshot_envelope;
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use uuid::Uuid;

/// Field for field the private `SnapshotEnvelope` in kernel/src/engine.rs; change both together
/// (a mismatch shows up at once as a failed round trip).
#[derive(Serialize)]
struct Envelope {
    fingerprint: String,
    sequence: u64,
    last_event_id: Uuid,
    checksum: [u8; 32],
    state: Vec<u8>,
}

/// The fewest bytes an envelope takes besides its fingerprint: one length byte each for the
/// fingerprint and the state, one for a small sequence, 1 + 16 for the id, 32 for the checksum.
const MIN_OVERHEAD: usize = 1 + 1 + 17 + 32 + 1;

fuzz_target!(|data: &[u8]| {
    if let Ok((fingerprint, _)) = decode_snapshot_envelope(data) {
        assert!(
            data.len() >= fingerprint.len() + MIN_OVERHEAD,
            "{} bytes decoded to a {}-byte fingerprint",
            data.len(),
            fingerprint.len()
        );
    }
    round_trip(data);
});

fn round_trip(data: &[u8]) {
    let mut input = Input(data);
    let fingerprint_len = usize::from(input.byte() % 64);
    let fingerprint = String::from_utf8_lossy(input.take(fingerprint_len)).into_owned();
    let sequence = u64::from_le_bytes(input.array());
    let last_event_id = Uuid::from_bytes(input.array());
    let checksum = input.array();
    let cut = usize::from(u16::from_le_bytes(input.array()));
    let envelope = Envelope {
        fingerprint,
        sequence,
        last_event_id,
        checksum,
        state: input.0.to_vec(),
    };
    // As `Engine::write_snapshot` encodes it.
    let bytes = bincode::serde::encode_to_vec(&envelope, bincode::config::standard())
        .expect("encoding an envelope");
    assert_eq!(
        decode_snapshot_envelope(&bytes),
        Ok((envelope.fingerprint, sequence)),
        "round trip"
    );
    let prefix = &bytes[..cut % bytes.len()];
    assert!(
        decode_snapshot_envelope(prefix).is_err(),
        "a {}-byte prefix of a {}-byte envelope decoded",
        prefix.len(),
        bytes.len()
    );
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
