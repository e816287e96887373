//! The gateway's own cancel keys, shaped so a CancelRequest can be routed to the right core.
//!
//! Clients receive a BackendKeyData minted by the gateway, never the upstream's key. A cancel
//! arrives on a fresh connection, which `SO_REUSEPORT` may hand to any core, so the key's
//! process id carries the owning core and a per-core session slot; the receiving core sends the
//! (core, slot, secret) to the owner, which checks the secret and forwards a CancelRequest with
//! the upstream's key. This module only packs and unpacks keys and compares secrets; generating
//! the secret (from a CSPRNG) and the cross-core message belong to the driver.

use super::frontend::CancelKey;

/// Bits of the process id given to the session slot; the rest name the core.
pub const SLOT_BITS: u32 = 20;

/// Most cores a key can name.
pub const MAX_CORES: u32 = 1 << (31 - SLOT_BITS);

/// Most concurrent sessions per core a key can name.
pub const MAX_SLOTS: u32 = 1 << SLOT_BITS;

/// Where a cancel key says its session lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelTarget {
    /// The worker core that owns the session.
    pub core: u32,
    /// The session's slot on that core.
    pub slot: u32,
}

/// Mints the key a client receives. `None` when `core` or `slot` is out of range. The process id
/// stays positive as an `i32`, since some clients print or store it signed.
pub fn mint(target: CancelTarget, secret_key: u32) -> Option<CancelKey> {
    if target.core >= MAX_CORES || target.slot >= MAX_SLOTS {
        return None;
    }
    Some(CancelKey {
        process_id: (target.core << SLOT_BITS) | target.slot,
        secret_key,
    })
}

/// Where a client's CancelRequest should go.
pub fn target(key: CancelKey) -> CancelTarget {
    CancelTarget {
        core: key.process_id >> SLOT_BITS,
        slot: key.process_id & (MAX_SLOTS - 1),
    }
}

/// Whether a presented secret is the session's. One word compared at once, so timing cannot
/// reveal partial matches; kept as a function so a wider secret later stays constant-time.
pub fn secret_matches(presented: u32, expected: u32) -> bool {
    (presented ^ expected) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_to_their_core_and_slot() {
        let t = CancelTarget {
            core: 7,
            slot: 12345,
        };
        let key = mint(t, 0xdead_beef).unwrap();
        assert_eq!(target(key), t);
        assert!(i32::try_from(key.process_id).is_ok());
        let max = CancelTarget {
            core: MAX_CORES - 1,
            slot: MAX_SLOTS - 1,
        };
        assert_eq!(target(mint(max, 1).unwrap()), max);
        assert!(i32::try_from(mint(max, 1).unwrap().process_id).is_ok());
        assert!(
            mint(
                CancelTarget {
                    core: MAX_CORES,
                    slot: 0
                },
                1
            )
            .is_none()
        );
        assert!(
            mint(
                CancelTarget {
                    core: 0,
                    slot: MAX_SLOTS
                },
                1
            )
            .is_none()
        );
        assert!(secret_matches(5, 5));
        assert!(!secret_matches(5, 4));
    }
}
