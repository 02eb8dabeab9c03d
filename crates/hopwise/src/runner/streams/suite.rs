//! The TLS 1.3 cipher suite the streams' QUIC connections negotiate: QUIC's handshake as
//! usual (its Initial packets under the version's AES keys, which QUIC fixes), and then packets
//! without a second layer of protection.
//!
//! Every QUIC packet rides in an end-to-end datagram, which the overlay encrypts and
//! authenticates between the two node keys and checks for replays; nothing else can put a
//! datagram on the stream port under a node's id. QUIC's own AEAD would encrypt the same bytes
//! again between the same two ends, a third cipher pass per byte next to the end-to-end and
//! hop-by-hop ones. The suite keeps the packet layout (a 16-byte tag, zeros, which is checked,
//! and a header protection sample), so quinn sees packets of the sizes it expects.
//!
//! The suite has a number from the private range; a node that does not know it negotiates
//! TLS_AES_128_GCM_SHA256, which stays on offer, and its streams still work.

use std::sync::LazyLock;

use rustls::crypto::CryptoProvider;
use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::quic::{Algorithm, HeaderProtectionKey, PacketKey, Tag};
use rustls::{CipherSuite, Error, SupportedCipherSuite, Tls13CipherSuite};

/// The suite's number, from the range TLS keeps for private use (0xff00 to 0xffff).
pub const OVERLAY_PROTECTED: CipherSuite = CipherSuite::Unknown(0xff68);

const TAG_LEN: usize = 16;
const SAMPLE_LEN: usize = 16;

/// TLS_AES_128_GCM_SHA256 for the handshake's hash and key schedule, with QUIC packets left to
/// the overlay's protection.
static SUITE: LazyLock<Tls13CipherSuite> = LazyLock::new(|| {
    let aes = aes_128_gcm();
    Tls13CipherSuite {
        common: rustls::crypto::CipherSuiteCommon {
            suite: OVERLAY_PROTECTED,
            ..aes.common
        },
        quic: Some(&OverlayProtected),
        ..*aes
    }
});

fn aes_128_gcm() -> &'static Tls13CipherSuite {
    rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .expect("TLS_AES_128_GCM_SHA256 is a TLS 1.3 suite")
}

/// ring's provider offering the overlay-protected suite first, and TLS_AES_128_GCM_SHA256 (which
/// QUIC's Initial packets need, and nodes without the suite negotiate).
pub fn provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: vec![
            SupportedCipherSuite::Tls13(&SUITE),
            rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    }
}

struct OverlayProtected;

impl Algorithm for OverlayProtected {
    fn packet_key(&self, _key: AeadKey, _iv: Iv) -> Box<dyn PacketKey> {
        Box::new(Unsealed)
    }

    fn header_protection_key(&self, _key: AeadKey) -> Box<dyn HeaderProtectionKey> {
        Box::new(Unsealed)
    }

    fn aead_key_len(&self) -> usize {
        16
    }
}

/// Packets as they are: the end-to-end datagram carrying them is sealed already.
struct Unsealed;

impl PacketKey for Unsealed {
    fn encrypt_in_place(&self, _: u64, _: &[u8], _: &mut [u8]) -> Result<Tag, Error> {
        Ok(Tag::from(&[0; TAG_LEN][..]))
    }

    fn decrypt_in_place<'a>(
        &self,
        _: u64,
        _: &[u8],
        payload: &'a mut [u8],
    ) -> Result<&'a [u8], Error> {
        // A packet of another suite (a peer that took a different one) fails here, not later.
        let body = payload
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(Error::DecryptError)?;
        if payload[body..].iter().any(|&byte| byte != 0) {
            return Err(Error::DecryptError);
        }
        Ok(&payload[..body])
    }

    fn tag_len(&self) -> usize {
        TAG_LEN
    }

    fn confidentiality_limit(&self) -> u64 {
        u64::MAX
    }

    fn integrity_limit(&self) -> u64 {
        u64::MAX
    }
}

impl HeaderProtectionKey for Unsealed {
    fn encrypt_in_place(&self, _: &[u8], _: &mut u8, _: &mut [u8]) -> Result<(), Error> {
        Ok(())
    }

    fn decrypt_in_place(&self, _: &[u8], _: &mut u8, _: &mut [u8]) -> Result<(), Error> {
        Ok(())
    }

    fn sample_len(&self) -> usize {
        SAMPLE_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_pass_unchanged_and_a_sealed_one_is_refused() {
        let key = Unsealed;
        let mut packet = b"stream frames".to_vec();
        let tag = PacketKey::encrypt_in_place(&key, 7, b"header", &mut packet).unwrap();
        assert_eq!(packet, b"stream frames");
        packet.extend_from_slice(tag.as_ref());
        assert_eq!(
            PacketKey::decrypt_in_place(&key, 7, b"header", &mut packet).unwrap(),
            b"stream frames"
        );
        // An AEAD's tag is not zeros: a packet sealed under another suite does not pass.
        let last = packet.len() - 1;
        packet[last] = 0x5a;
        assert!(PacketKey::decrypt_in_place(&key, 7, b"header", &mut packet).is_err());
        assert!(PacketKey::decrypt_in_place(&key, 7, b"header", &mut [0; 3]).is_err());
    }
}
