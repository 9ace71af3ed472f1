//! Successful verifications, keyed by the SHA-256 of the token, kept until the token expires: a
//! repeated token costs a hash and a map lookup, and its principal is shared, not copied. The
//! token itself is never stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

use super::Principal;

/// Default number of tokens remembered.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// A bounded map from token hash to principal.
#[derive(Debug)]
pub struct VerificationCache {
    entries: RwLock<HashMap<[u8; 32], Arc<Principal>>>,
    capacity: usize,
    /// When a full cache was last swept (Unix seconds): at most once a second, so a cache kept
    /// full by live tokens does not cost every new token a scan under the write lock.
    swept_at: AtomicI64,
}

impl VerificationCache {
    /// An empty cache holding at most `capacity` tokens (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            capacity,
            swept_at: AtomicI64::new(i64::MIN),
        }
    }

    /// The principal for `token` if it was verified before and may still be reused
    /// ([`Principal::reuse_until`], never past its expiry).
    pub fn get(&self, token: &str, now: i64) -> Option<Arc<Principal>> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&key)
            .filter(|p| p.expires_at > now && p.reuse_until > now)
            .cloned()
    }

    /// Remembers a verified token until its expiry. When full, expired entries are dropped (at
    /// most once a second); if that frees nothing, the cache is emptied, so it keeps the tokens
    /// in use now (a token dropped is verified again, only slower).
    pub fn insert(&self, token: &str, principal: Arc<Principal>) {
        self.insert_at(token, principal, crate::approval::unix_now());
    }

    fn insert_at(&self, token: &str, principal: Arc<Principal>, now: i64) {
        if self.capacity == 0 {
            return;
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if !entries.contains_key(&key) {
            // Emptied when full of live tokens: those in use are cached again as they come back.
            make_room(&mut entries, self.capacity, &self.swept_at, now, |_, p| {
                p.expires_at > now && p.reuse_until > now
            });
        }
        entries.insert(key, principal);
    }

    /// Number of cached tokens.
    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Makes room in `map`, full at `capacity`, for a new key at Unix time `now`: drops the entries
/// `live` says are over (at most once a second, `swept_at` keeping when), and empties the map if
/// that freed nothing. Once per `capacity` new keys, so the cost per key stays constant where
/// every entry is live, instead of a scan (under the caller's lock) for every new one.
pub(super) fn make_room<V>(
    map: &mut HashMap<[u8; 32], V>,
    capacity: usize,
    swept_at: &AtomicI64,
    now: i64,
    live: impl FnMut(&[u8; 32], &mut V) -> bool,
) {
    if map.len() < capacity {
        return;
    }
    if swept_at.load(Ordering::Relaxed) < now {
        swept_at.store(now, Ordering::Relaxed);
        map.retain(live);
    }
    if map.len() >= capacity {
        map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(expires_at: i64) -> Arc<Principal> {
        Arc::new(Principal {
            identity: "ci".into(),
            issuer: "https://idp.example".into(),
            subject: "ci".into(),
            groups: Vec::new(),
            token_id: None,
            expires_at,
            binding: None,
            require_dpop: false,
            reuse_until: expires_at,
        })
    }

    /// A cache full of live tokens takes new ones (it does not scan itself for every one, and
    /// does not stop caching); expired ones make room first.
    #[test]
    fn a_full_cache_keeps_taking_the_tokens_in_use() {
        let cache = VerificationCache::new(4);
        let now = 1_000;
        for t in ["a", "b", "c"] {
            cache.insert_at(t, principal(now + 60), now);
        }
        cache.insert_at("old", principal(now + 1), now);
        assert_eq!(cache.len(), 4);
        // One expired entry makes room.
        cache.insert_at("d", principal(now + 60), now + 2);
        assert_eq!(cache.len(), 4);
        assert!(cache.get("d", now + 2).is_some() && cache.get("a", now + 2).is_some());
        // Full of live tokens, swept this second already: the new token is cached all the same.
        cache.insert_at("e", principal(now + 60), now + 2);
        assert!(cache.get("e", now + 2).is_some());
        assert!(cache.len() <= 4);
        // A token already cached replaces its entry without emptying the cache.
        let before = cache.len();
        cache.insert_at("e", principal(now + 90), now + 2);
        assert_eq!(cache.len(), before);
    }
}
