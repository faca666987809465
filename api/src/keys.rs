//! API keys: the master key, tenant keys stored hashed, roles and scopes.
//!
//! - The master key comes from `--master-key` / `DEPOT_MASTER_KEY`, else from
//!   `<data-dir>/master.key`, else it is generated, written there with mode 0600 and returned
//!   by [`KeyStore::open`] so the server prints it once.
//! - Tenant keys live in `<data-dir>/keys.json` as SHA-256 digests of their secrets: a secret
//!   is 256 random bits, so a plain digest cannot be brute-forced and no slow password hash is
//!   needed. The file is replaced atomically (temporary file, fsync, rename, fsync of the
//!   directory) on every change, so a crash leaves the old file or the new one.
//! - [`KeyStore::authenticate`] finds a key by its digest in a hash index (O(1)) and then
//!   compares the digests in constant time, so neither a near miss nor a revoked key answers
//!   faster than an unknown one.
//! - A key's id (`key_...`) is public (events carry it as `key_id`); its secret (`dpk_...`)
//!   embeds nothing but randomness and is shown only when created.

use depot_engine::{ChannelId, LocationId, TenantId};
use ipnet::IpNet;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use subtle::ConstantTimeEq;

/// The master key's file inside the data directory (mode 0600).
pub const MASTER_KEY_FILE: &str = "master.key";
/// The tenant keys' file inside the data directory.
pub const KEYS_FILE: &str = "keys.json";
/// Most keys the store holds, revoked ones included (they stay listed).
pub const KEYS_MAX: usize = 100_000;
/// Most channels or locations one key may be scoped to.
pub const KEY_SCOPE_MAX: usize = 1_000;
/// Most CIDRs one key may allow.
pub const KEY_CIDRS_MAX: usize = 64;
/// Shortest master key accepted from the command line or the environment, in bytes.
pub const MASTER_KEY_LEN_MIN: usize = 16;
/// Longest bearer token looked at; anything longer is refused before it is hashed.
pub const BEARER_LEN_MAX: usize = 256;
/// The prefix of every generated secret (master and tenant keys): lets secret scanners and
/// people recognise a depot key.
pub const SECRET_PREFIX: &str = "dpk_";
/// The prefix of every key id.
pub const KEY_ID_PREFIX: &str = "key_";
/// The `key_id` the master key acts as (in events and rate limits).
pub const MASTER_KEY_ID: &str = "master";

/// Version of the `keys.json` layout.
const KEYS_FILE_VERSION: u32 = 1;
/// Random bytes in a secret (256 bits).
const SECRET_BYTES: usize = 32;
/// Random bytes in a key id (80 bits: unique without coordination, and a clash is retried).
/// `key_` and 20 hex digits make 24 bytes, the most a `CompactString` keeps inline: the id is
/// copied into every event (and the event log's copy of it) without an allocation. With 96
/// bits (28 bytes) each copy allocated, three per `/v1/batch` reservation.
const KEY_ID_BYTES: usize = 10;

/// What a key may do (API.md: `admin`, `channel`, `wms`, `reader`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Channel,
    Wms,
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Channel => "channel",
            Role::Wms => "wms",
            Role::Reader => "reader",
        }
    }
}

/// A key as stored and listed; never its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Public id, `key_` and 20 hex digits (24 hex digits for keys made before 80-bit ids).
    pub id: String,
    /// The tenant the key acts for. Only the master key acts for none, and it is not a record:
    /// [`KeyStore::create`] refuses `None`.
    pub tenant: Option<TenantId>,
    pub role: Role,
    /// The channels it may act for; empty means every channel of its tenant.
    #[serde(default)]
    pub channels: Vec<ChannelId>,
    /// The locations it may act for; empty means every location of its tenant.
    #[serde(default)]
    pub locations: Vec<LocationId>,
    /// The peer addresses it may be used from; empty means any.
    #[serde(default)]
    pub cidrs: Vec<IpNet>,
    pub created_at_ms: i64,
    #[serde(default)]
    pub revoked: bool,
}

impl KeyRecord {
    /// True when the key may act for `channel` (an empty list allows every channel).
    pub fn allows_channel(&self, channel: &ChannelId) -> bool {
        self.channels.is_empty() || self.channels.contains(channel)
    }
    /// True when the key may act for `location` (an empty list allows every location).
    pub fn allows_location(&self, location: &LocationId) -> bool {
        self.locations.is_empty() || self.locations.contains(location)
    }
    /// True when `peer` is inside one of the key's CIDRs (or the key has none).
    /// IPv4 peers seen as IPv4-mapped IPv6 (`::ffff:10.0.0.1`) match IPv4 CIDRs.
    pub fn allows_peer(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.cidrs.is_empty() || self.cidrs.iter().any(|c| c.contains(&peer))
    }
}

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// The master key: may create tenants and keys, nothing else.
    Master,
    Key(Arc<KeyRecord>),
}

impl Principal {
    /// The id recorded in events and used for rate limits: the key's id, or `master`.
    pub fn key_id(&self) -> &str {
        match self {
            Principal::Master => MASTER_KEY_ID,
            Principal::Key(k) => &k.id,
        }
    }
    /// The key's tenant; `None` for the master key.
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Principal::Master => None,
            Principal::Key(k) => k.tenant.as_ref(),
        }
    }
    /// The key's role; `None` for the master key.
    pub fn role(&self) -> Option<Role> {
        match self {
            Principal::Master => None,
            Principal::Key(k) => Some(k.role),
        }
    }
}

/// Why a bearer token was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Unknown, malformed or revoked key (401).
    #[error("unknown or revoked key")]
    Unauthenticated,
    /// A valid key used from an address outside its CIDRs (403).
    #[error("the key may not be used from this address")]
    Forbidden,
}

/// Why a key-store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The key file exists but cannot be trusted; the server must not start on it.
    #[error("{file}: {reason}")]
    Corrupt { file: String, reason: String },
    /// Bad input to `create` or `open` (names the field).
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    #[error("key not found")]
    NotFound,
    #[error("limit reached: {what} (at most {limit})")]
    LimitExceeded { what: String, limit: u64 },
}

impl KeyError {
    fn io(file: &Path, source: std::io::Error) -> Self {
        KeyError::Io {
            file: file.display().to_string(),
            source,
        }
    }
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        KeyError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// SHA-256 of a secret.
type Digest = [u8; 32];

/// A key record with the digest of its secret: one line of `keys.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredKey {
    #[serde(flatten)]
    record: KeyRecord,
    /// Hex SHA-256 of the secret.
    secret_sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct KeysFile {
    version: u32,
    keys: Vec<StoredKey>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Every key, in creation order (revoked ones too: indices never move).
    /// Shared: an authenticated request holds its key's record without copying it.
    keys: Vec<(Arc<KeyRecord>, Digest)>,
    by_id: HashMap<String, usize>,
    by_digest: HashMap<Digest, usize>,
    /// The BLAKE3 digest of each secret this process has seen authenticate (or created),
    /// and its key. See [`KeyStore::authenticate`].
    by_fast: HashMap<Digest, usize>,
}

impl Inner {
    fn insert(&mut self, record: KeyRecord, digest: Digest) -> Result<(), String> {
        if self.by_id.contains_key(&record.id) {
            return Err(format!("duplicate key id {:?}", record.id));
        }
        if self.by_digest.contains_key(&digest) {
            return Err(format!("key {:?} has the digest of another key", record.id));
        }
        let i = self.keys.len();
        self.by_id.insert(record.id.clone(), i);
        self.by_digest.insert(digest, i);
        self.keys.push((Arc::new(record), digest));
        Ok(())
    }

    /// Undoes the last `insert` (its write to disk failed).
    fn pop(&mut self) {
        if let Some((record, digest)) = self.keys.pop() {
            self.by_id.remove(&record.id);
            self.by_digest.remove(&digest);
        }
    }

    fn to_file(&self) -> KeysFile {
        KeysFile {
            version: KEYS_FILE_VERSION,
            keys: self
                .keys
                .iter()
                .map(|(record, digest)| StoredKey {
                    record: KeyRecord::clone(record),
                    secret_sha256: hex(digest),
                })
                .collect(),
        }
    }
}

/// The durable key store. Thread-safe: every method takes `&self`.
#[derive(Debug)]
pub struct KeyStore {
    dir: PathBuf,
    /// The BLAKE3 digest of the master key (see [`KeyStore::authenticate`]).
    master_fast: Digest,
    inner: RwLock<Inner>,
    /// Held by a writer from its change until its file is written: writers go one at a time,
    /// while `inner` is write-locked only for the change itself, never during the fsync, so
    /// authentications do not wait for the disk.
    writing: Mutex<()>,
}

impl KeyStore {
    /// Opens (or creates) the store in `data_dir`. The master key is `master_key` when given,
    /// else the content of `<data_dir>/master.key`, else a new one written there with mode
    /// 0600. The second value is that newly generated master key, to be printed once.
    pub fn open(
        data_dir: &Path,
        master_key: Option<String>,
    ) -> Result<(KeyStore, Option<String>), KeyError> {
        fs::create_dir_all(data_dir).map_err(|e| KeyError::io(data_dir, e))?;
        // Keys first: a start that fails on a damaged key file generates no master key.
        let inner = load_keys(&data_dir.join(KEYS_FILE))?;
        let (master, generated) = match master_key {
            Some(k) => {
                check_master_key(&k)?;
                (k, None)
            }
            None => match read_master_key(data_dir)? {
                Some(k) => (k, None),
                None => {
                    let k = new_secret();
                    write_master_key(data_dir, &k)?;
                    (k.clone(), Some(k))
                }
            },
        };
        let store = KeyStore {
            dir: data_dir.to_path_buf(),
            master_fast: fast_digest(master.as_bytes()),
            inner: RwLock::new(inner),
            writing: Mutex::new(()),
        };
        Ok((store, generated))
    }

    /// Creates a key and returns its record and its secret (shown once, stored only hashed).
    pub fn create(
        &self,
        tenant: Option<TenantId>,
        role: Role,
        channels: Vec<ChannelId>,
        locations: Vec<LocationId>,
        cidrs: Vec<IpNet>,
        now_ms: i64,
    ) -> Result<(KeyRecord, String), KeyError> {
        if tenant.is_none() {
            return Err(KeyError::invalid("tenant", "a key needs a tenant"));
        }
        check_len("channels", channels.len(), KEY_SCOPE_MAX)?;
        check_len("locations", locations.len(), KEY_SCOPE_MAX)?;
        check_len("cidrs", cidrs.len(), KEY_CIDRS_MAX)?;
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let mut inner = self.write();
        if inner.keys.len() >= KEYS_MAX {
            return Err(KeyError::LimitExceeded {
                what: "keys".into(),
                limit: KEYS_MAX as u64,
            });
        }
        // 80 random bits: a clash is practically impossible, but a retry costs nothing.
        let id = loop {
            let id = format!("{KEY_ID_PREFIX}{}", hex(&random_bytes::<KEY_ID_BYTES>()));
            if !inner.by_id.contains_key(&id) {
                break id;
            }
        };
        let secret = new_secret();
        let digest = sha256(secret.as_bytes());
        let record = KeyRecord {
            id,
            tenant,
            role,
            channels,
            locations,
            cidrs: cidrs.into_iter().map(|c| c.trunc()).collect(),
            created_at_ms: now_ms,
            revoked: false,
        };
        inner
            .insert(record.clone(), digest)
            .map_err(|reason| KeyError::Corrupt {
                file: KEYS_FILE.into(),
                reason,
            })?;
        let json = file_bytes(&inner);
        drop(inner);
        // The key is in the index before it is durable, but nobody knows its secret until
        // this returns it, after the write.
        if let Err(e) = self.write_file(json) {
            self.write().pop();
            return Err(e);
        }
        let mut inner = self.write();
        if let Some(&i) = inner.by_id.get(&record.id) {
            inner.by_fast.insert(fast_digest(secret.as_bytes()), i);
        }
        drop(inner);
        Ok((record, secret))
    }

    /// Revokes key `id`. `by_tenant` is the revoking admin's tenant (`None`: the master key);
    /// a key of another tenant is [`KeyError::NotFound`], as if it did not exist. Revoking a
    /// revoked key succeeds.
    pub fn revoke(&self, id: &str, by_tenant: Option<&TenantId>) -> Result<(), KeyError> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let mut inner = self.write();
        let i = *inner.by_id.get(id).ok_or(KeyError::NotFound)?;
        let record = Arc::make_mut(&mut inner.keys[i].0);
        if by_tenant.is_some_and(|t| record.tenant.as_ref() != Some(t)) {
            return Err(KeyError::NotFound);
        }
        if record.revoked {
            return Ok(());
        }
        // Refused from this moment on, before the file says so.
        record.revoked = true;
        let json = file_bytes(&inner);
        drop(inner);
        if let Err(e) = self.write_file(json) {
            // Memory and file agree again; the caller sees the error and may retry.
            Arc::make_mut(&mut self.write().keys[i].0).revoked = false;
            return Err(e);
        }
        Ok(())
    }

    /// Who `bearer` (the token after `Bearer `) is, seen from `peer`.
    ///
    /// The file keeps each secret's SHA-256 digest. SHA-256 without the CPU's SHA extensions
    /// cost about 7,000 instructions per request, a tenth of a single reservation's whole
    /// server time, so the store also remembers, in memory only, the BLAKE3 digest of every
    /// secret that has authenticated since the start (or was created by this process), which
    /// costs about a tenth of that: a secret seen before is found by its BLAKE3 digest, any
    /// other is checked against the SHA-256 digests as always. Either way the digest that
    /// decides is compared in constant time, and a revoked key is refused.
    pub fn authenticate(&self, bearer: &str, peer: IpAddr) -> Result<Principal, AuthError> {
        if bearer.is_empty() || bearer.len() > BEARER_LEN_MAX {
            return Err(AuthError::Unauthenticated);
        }
        let fast = fast_digest(bearer.as_bytes());
        if digests_equal(&fast, &self.master_fast) {
            return Ok(Principal::Master);
        }
        let mut inner = self.read();
        let i = match inner.by_fast.get_key_value(&fast) {
            // As below: the index found it; the comparison that decides is constant-time.
            Some((stored, &i)) if digests_equal(&fast, stored) => i,
            Some(_) => return Err(AuthError::Unauthenticated),
            None => {
                let digest = sha256(bearer.as_bytes());
                let Some(&i) = inner.by_digest.get(&digest) else {
                    return Err(AuthError::Unauthenticated);
                };
                // The index found it by digest; the comparison that decides is constant-time.
                if !digests_equal(&digest, &inner.keys[i].1) {
                    return Err(AuthError::Unauthenticated);
                }
                drop(inner);
                self.write().by_fast.insert(fast, i);
                inner = self.read();
                i
            }
        };
        let Some((record, _)) = inner.keys.get(i) else {
            return Err(AuthError::Unauthenticated);
        };
        if record.revoked {
            return Err(AuthError::Unauthenticated);
        }
        if !record.allows_peer(peer) {
            return Err(AuthError::Forbidden);
        }
        Ok(Principal::Key(record.clone()))
    }

    /// The keys of `tenant` (every key when `None`), revoked ones included, oldest first.
    pub fn list(&self, tenant: Option<&TenantId>) -> Vec<KeyRecord> {
        self.read()
            .keys
            .iter()
            .filter(|(r, _)| tenant.is_none() || r.tenant.as_ref() == tenant)
            .map(|(r, _)| KeyRecord::clone(r))
            .collect()
    }

    /// The key `id`, if it exists.
    pub fn get(&self, id: &str) -> Option<KeyRecord> {
        let inner = self.read();
        inner
            .by_id
            .get(id)
            .map(|&i| KeyRecord::clone(&inner.keys[i].0))
    }

    /// The directory the store lives in.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-changed in a way that
        // matters: every change is a single push or flag, undone when the write fails.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn write_file(&self, json: Result<Vec<u8>, KeyError>) -> Result<(), KeyError> {
        write_atomically(&self.dir, KEYS_FILE, &json?, 0o600)
    }
}

/// The content of `keys.json` for `inner`.
fn file_bytes(inner: &Inner) -> Result<Vec<u8>, KeyError> {
    serde_json::to_vec_pretty(&inner.to_file()).map_err(|e| KeyError::Io {
        file: KEYS_FILE.into(),
        source: e.into(),
    })
}

/// Compares two digests in constant time (no early exit on the first differing byte). Word by
/// word: `subtle` compares a byte slice one byte at a time behind an optimisation barrier each,
/// about 300 instructions per comparison, and every request compares twice.
pub fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let words = |d: &[u8; 32]| -> [u64; 4] {
        std::array::from_fn(|i| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&d[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(w)
        })
    };
    words(a).as_slice().ct_eq(words(b).as_slice()).into()
}

/// The in-memory digest of a secret (see [`KeyStore::authenticate`]).
fn fast_digest(bytes: &[u8]) -> Digest {
    *blake3::hash(bytes).as_bytes()
}

fn sha256(bytes: &[u8]) -> Digest {
    Sha256::digest(bytes).into()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Digest> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// A new secret: the prefix and 256 random bits in hex.
fn new_secret() -> String {
    format!("{SECRET_PREFIX}{}", hex(&random_bytes::<SECRET_BYTES>()))
}

fn check_len(field: &str, len: usize, max: usize) -> Result<(), KeyError> {
    if len > max {
        return Err(KeyError::invalid(field, format!("at most {max} entries")));
    }
    Ok(())
}

/// A master key must be usable in a header and not trivially guessable.
fn check_master_key(k: &str) -> Result<(), KeyError> {
    if k.len() < MASTER_KEY_LEN_MIN || k.len() > BEARER_LEN_MAX {
        return Err(KeyError::invalid(
            "master_key",
            format!("must be {MASTER_KEY_LEN_MIN} to {BEARER_LEN_MAX} bytes long"),
        ));
    }
    if !k.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(KeyError::invalid(
            "master_key",
            "must be printable ASCII without spaces",
        ));
    }
    Ok(())
}

fn read_master_key(dir: &Path) -> Result<Option<String>, KeyError> {
    let path = dir.join(MASTER_KEY_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(KeyError::io(&path, e)),
    };
    warn_if_readable_by_others(&path);
    let key = text.trim().to_string();
    check_master_key(&key).map_err(|e| KeyError::Corrupt {
        file: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(Some(key))
}

fn write_master_key(dir: &Path, key: &str) -> Result<(), KeyError> {
    write_atomically(dir, MASTER_KEY_FILE, format!("{key}\n").as_bytes(), 0o600)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(file = %path.display(), mode = format!("{mode:o}"),
                "the master key file is readable by others; chmod 600 it");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

fn load_keys(path: &Path) -> Result<Inner, KeyError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Inner::default()),
        Err(e) => return Err(KeyError::io(path, e)),
    };
    let corrupt = |reason: String| KeyError::Corrupt {
        file: path.display().to_string(),
        reason,
    };
    let file: KeysFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.version != KEYS_FILE_VERSION {
        return Err(corrupt(format!("unknown version {}", file.version)));
    }
    if file.keys.len() > KEYS_MAX {
        return Err(corrupt(format!("more than {KEYS_MAX} keys")));
    }
    let mut inner = Inner::default();
    for k in file.keys {
        let digest = unhex(&k.secret_sha256)
            .ok_or_else(|| corrupt(format!("key {:?}: bad secret_sha256", k.record.id)))?;
        if k.record.tenant.is_none() {
            return Err(corrupt(format!("key {:?} has no tenant", k.record.id)));
        }
        inner.insert(k.record, digest).map_err(corrupt)?;
    }
    Ok(inner)
}

/// Replaces `dir/name` with `bytes`: a temporary file written and synced, renamed over the
/// old one, then the directory synced, so a crash leaves either the old or the new content.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        KeyError::io(&path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_bad_digests() {
        let d = sha256(b"x");
        assert_eq!(unhex(&hex(&d)), Some(d));
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex(&"g".repeat(64)), None);
        // Multi-byte characters must not make the slicing panic.
        assert_eq!(unhex(&"é".repeat(32)), None);
    }

    #[test]
    fn digests_equal_is_exact() {
        let a = sha256(b"a");
        let same = a;
        assert!(digests_equal(&a, &same));
        // Any one bit differing, in any byte of any word.
        for byte in 0..32 {
            for bit in 0..8 {
                let mut b = a;
                b[byte] ^= 1 << bit;
                assert!(!digests_equal(&a, &b), "byte {byte} bit {bit}");
            }
        }
        assert!(!digests_equal(&a, &sha256(b"b")));
    }

    #[test]
    fn secrets_are_random_and_prefixed() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX));
        assert_eq!(a.len(), SECRET_PREFIX.len() + 2 * SECRET_BYTES);
    }
}
