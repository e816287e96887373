//! The per-core cache of verified tokens, so a caller reconnecting with the same token (a
//! connection pool, `psql` in a loop) costs one hash lookup instead of a signature check.
//!
//! One cache per worker, never shared: it is deliberately not `Sync` and takes no lock. An entry
//! lives until its token expires (plus leeway) or the key set changes, whichever comes first.
//! The map is bounded by [`TokenCache::capacity`]; when full, expired entries go first, then an
//! arbitrary one.
//!
//! Why the full token is stored: the hash only chooses the slot, and a hit requires the
//! presented bytes to equal the verified ones. Keying by a hash alone would let anyone who finds
//! a collision with a cached token borrow its identity.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::marker::PhantomData;
use std::sync::Arc;

use super::{Identity, UnixSeconds};

/// Default number of cached tokens per core.
pub const DEFAULT_CACHE_ENTRIES: usize = 4096;

/// How many trailing bytes of the token are hashed. The tail is the signature: unique per
/// token and chosen by the issuer, not the caller, so hashing it alone spreads valid tokens
/// well without paying to hash a kilobyte.
const HASHED_TAIL: usize = 32;

/// The map key is already a keyed hash; hashing it again would only cost time.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

struct Entry {
    token: Box<[u8]>,
    identity: Arc<Identity>,
    valid_until: UnixSeconds,
    generation: u64,
}

/// Verified tokens for one worker. Use through [`super::Verifier::verify_cached`].
pub struct TokenCache {
    map: HashMap<u64, Entry, BuildHasherDefault<PassThrough>>,
    seed: RandomState,
    capacity: usize,
    hits: u64,
    misses: u64,
    /// Keeps the cache on the core that made it.
    _not_sync: PhantomData<Cell<()>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("len", &self.map.len())
            .field("capacity", &self.capacity)
            .field("hits", &self.hits)
            .field("misses", &self.misses)
            .finish()
    }
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new(DEFAULT_CACHE_ENTRIES)
    }
}

impl TokenCache {
    /// A cache holding at most `capacity` tokens (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        TokenCache {
            map: HashMap::with_capacity_and_hasher(capacity, BuildHasherDefault::default()),
            seed: RandomState::new(),
            capacity,
            hits: 0,
            misses: 0,
            _not_sync: PhantomData,
        }
    }

    #[inline]
    fn key(&self, token: &[u8]) -> u64 {
        let tail = token
            .get(token.len().saturating_sub(HASHED_TAIL)..)
            .unwrap_or(token);
        let mut h = self.seed.build_hasher();
        h.write_usize(token.len());
        h.write(tail);
        h.finish()
    }

    /// The identity cached for exactly `token`, if it is still valid at `now` and was verified
    /// under key-set `generation`.
    #[inline]
    pub fn get(
        &mut self,
        token: &[u8],
        now: UnixSeconds,
        generation: u64,
    ) -> Option<Arc<Identity>> {
        let key = self.key(token);
        let hit = match self.map.get(&key) {
            Some(e) if e.generation == generation && now < e.valid_until && *e.token == *token => {
                Some(Arc::clone(&e.identity))
            }
            Some(_) => {
                self.map.remove(&key);
                None
            }
            None => None,
        };
        if hit.is_some() {
            self.hits = self.hits.wrapping_add(1);
        } else {
            self.misses = self.misses.wrapping_add(1);
        }
        hit
    }

    /// Remembers that `token` verified to `identity` at `now`, valid until `valid_until`.
    pub fn insert(
        &mut self,
        token: &[u8],
        identity: Arc<Identity>,
        now: UnixSeconds,
        valid_until: UnixSeconds,
        generation: u64,
    ) {
        let key = self.key(token);
        if self.map.len() >= self.capacity && !self.map.contains_key(&key) {
            self.map
                .retain(|_, e| e.generation == generation && e.valid_until > now);
            if self.map.len() >= self.capacity
                && let Some(victim) = self.map.keys().next().copied()
            {
                self.map.remove(&victim);
            }
        }
        self.map.insert(
            key,
            Entry {
                token: token.into(),
                identity,
                valid_until,
                generation,
            },
        );
    }

    /// Number of cached tokens.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The bound on cached tokens.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Lookups that hit, for the worker's metrics.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Lookups that missed, for the worker's metrics.
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// Drops everything (a worker may call this on configuration reload).
    pub fn clear(&mut self) {
        self.map.clear();
    }
}
