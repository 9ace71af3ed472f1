//! Successful verifications, keyed by the SHA-256 of the token, kept until the token expires: a
//! repeated token costs a hash and a map lookup, and its principal is shared, not copied. The
//! token itself is never stored.

use std::collections::HashMap;
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
}

impl VerificationCache {
    /// An empty cache holding at most `capacity` tokens (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            capacity,
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

    /// Remembers a verified token until its expiry. When full, expired entries are dropped first;
    /// if none are, the new entry is simply not cached (verification stays correct, only slower).
    pub fn insert(&self, token: &str, principal: Arc<Principal>) {
        if self.capacity == 0 {
            return;
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(i64::MAX);
            entries.retain(|_, p| p.expires_at > now && p.reuse_until > now);
            if entries.len() >= self.capacity {
                return;
            }
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
