//! The key store: master key sources, hashed storage, persistence across reopen, revocation,
//! scopes, CIDRs and concurrent use.

use depot_api::keys::{
    AuthError, KeyError, KeyStore, Principal, Role, KEYS_FILE, MASTER_KEY_FILE, SECRET_PREFIX,
};
use depot_engine::{ChannelId, LocationId, TenantId};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

const MASTER: &str = "test-master-key-0123456789";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn local() -> IpAddr {
    ip("127.0.0.1")
}

fn tenant(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

fn open(dir: &Path) -> KeyStore {
    KeyStore::open(dir, Some(MASTER.to_string())).unwrap().0
}

fn create(store: &KeyStore, t: &str, role: Role) -> (depot_api::keys::KeyRecord, String) {
    store
        .create(Some(tenant(t)), role, vec![], vec![], vec![], 1_000)
        .unwrap()
}

#[test]
fn a_generated_master_key_is_stored_0600_and_returned_only_the_first_time() {
    let dir = tempfile::tempdir().unwrap();
    let (store, generated) = KeyStore::open(dir.path(), None).unwrap();
    let key = generated.expect("a new master key on the first start");
    assert!(key.starts_with(SECRET_PREFIX));
    assert_eq!(store.authenticate(&key, local()), Ok(Principal::Master));
    let path = dir.path().join(MASTER_KEY_FILE);
    assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), key);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    drop(store);
    let (store, again) = KeyStore::open(dir.path(), None).unwrap();
    assert_eq!(again, None, "printed once only");
    assert_eq!(store.authenticate(&key, local()), Ok(Principal::Master));
}

#[test]
fn a_given_master_key_wins_over_the_file_and_is_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let (store, generated) = KeyStore::open(dir.path(), Some(MASTER.into())).unwrap();
    assert_eq!(generated, None);
    assert!(!dir.path().join(MASTER_KEY_FILE).exists());
    assert_eq!(store.authenticate(MASTER, local()), Ok(Principal::Master));
    drop(store);
    // A file from an earlier start is ignored when a key is given.
    let (_, file_key) = KeyStore::open(dir.path(), None).unwrap();
    let file_key = file_key.unwrap();
    let (store, _) = KeyStore::open(dir.path(), Some(MASTER.into())).unwrap();
    assert_eq!(
        store.authenticate(&file_key, local()),
        Err(AuthError::Unauthenticated)
    );
    assert_eq!(store.authenticate(MASTER, local()), Ok(Principal::Master));
}

#[test]
fn weak_or_unprintable_master_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        "short",
        "",
        "has a space in it, long enough",
        "tab\there-0123456789",
    ] {
        let err = KeyStore::open(dir.path(), Some(bad.into())).unwrap_err();
        assert!(
            matches!(err, KeyError::Invalid { ref field, .. } if field == "master_key"),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn a_created_key_authenticates_and_only_its_digest_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (record, secret) = store
        .create(
            Some(tenant("acme")),
            Role::Channel,
            vec![ChannelId::new("shopify:acme").unwrap()],
            vec![],
            vec![],
            42,
        )
        .unwrap();
    assert!(record.id.starts_with("key_"));
    // `key_` and 20 hex digits: 24 bytes, kept inline wherever an event copies the id.
    assert_eq!(record.id.len(), 24, "{}", record.id);
    assert!(record.id[4..].bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(secret.starts_with(SECRET_PREFIX));
    assert!(
        !secret.contains(&record.id[4..]),
        "the secret embeds nothing public"
    );
    assert_eq!(record.created_at_ms, 42);
    let p = store.authenticate(&secret, local()).unwrap();
    assert_eq!(p, Principal::Key(Arc::new(record.clone())));
    assert_eq!(p.key_id(), record.id);
    assert_eq!(p.tenant(), Some(&tenant("acme")));
    assert_eq!(p.role(), Some(Role::Channel));
    let Principal::Key(k) = p else { unreachable!() };
    assert!(k.allows_channel(&ChannelId::new("shopify:acme").unwrap()));
    assert!(!k.allows_channel(&ChannelId::new("amazon:us").unwrap()));
    assert!(k.allows_location(&LocationId::new("anywhere").unwrap()));

    let file = std::fs::read_to_string(dir.path().join(KEYS_FILE)).unwrap();
    assert!(!file.contains(&secret), "the secret is never stored");
    assert!(file.contains(&record.id));
    assert!(file.contains("\"role\": \"channel\""), "{file}");
}

#[test]
fn wrong_keys_are_unauthenticated_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (_, secret) = create(&store, "acme", Role::Admin);
    let mut near = secret.clone();
    let last = near.pop().unwrap();
    near.push(if last == '0' { '1' } else { '0' });
    let long = "x".repeat(10_000);
    for bad in [
        near.as_str(),
        "",
        "dpk_",
        "Bearer",
        long.as_str(),
        "é\u{0}\n",
    ] {
        assert_eq!(
            store.authenticate(bad, local()),
            Err(AuthError::Unauthenticated),
            "{bad:?}"
        );
    }
}

#[test]
fn a_key_without_a_tenant_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let err = store
        .create(None, Role::Admin, vec![], vec![], vec![], 0)
        .unwrap_err();
    assert!(matches!(err, KeyError::Invalid { ref field, .. } if field == "tenant"));
}

#[test]
fn keys_and_revocations_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (a, secret_a) = create(&store, "acme", Role::Admin);
    let (b, secret_b) = create(&store, "acme", Role::Reader);
    store.revoke(&b.id, None).unwrap();
    let listed = store.list(None);
    drop(store);

    let store = open(dir.path());
    assert_eq!(store.list(None), listed);
    assert_eq!(
        store.authenticate(&secret_a, local()),
        Ok(Principal::Key(Arc::new(a)))
    );
    assert_eq!(
        store.authenticate(&secret_b, local()),
        Err(AuthError::Unauthenticated)
    );
    assert!(store.get(&b.id).unwrap().revoked);
}

/// A key seen before is found by its in-memory digest; being seen changes nothing about what
/// it may do: it is refused once revoked, refused from another address, and a secret that
/// differs in one character is not it. Holds for keys created by this process and for keys
/// read from the file (seen first through their stored SHA-256 digest).
#[test]
fn keys_seen_before_are_refused_once_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (created, created_secret) = create(&store, "acme", Role::Admin);
    let (_, loaded_secret) = create(&store, "acme", Role::Channel);
    drop(store);
    let store = open(dir.path());
    let (fresh, fresh_secret) = create(&store, "acme", Role::Reader);
    for (id, secret) in [
        (created.id.clone(), created_secret),
        (store.list(None)[1].id.clone(), loaded_secret),
        (fresh.id.clone(), fresh_secret),
    ] {
        for _ in 0..3 {
            let Ok(Principal::Key(k)) = store.authenticate(&secret, local()) else {
                panic!("{id} authenticates");
            };
            assert_eq!(k.id, id);
        }
        let mut other = secret.clone().into_bytes();
        let last = other.len() - 1;
        other[last] = if other[last] == b'0' { b'1' } else { b'0' };
        let other = String::from_utf8(other).unwrap();
        assert_eq!(
            store.authenticate(&other, local()),
            Err(AuthError::Unauthenticated)
        );
        store.revoke(&id, None).unwrap();
        assert_eq!(
            store.authenticate(&secret, local()),
            Err(AuthError::Unauthenticated)
        );
    }
    // The master key, and a master key that differs in its last character.
    let master = "m".repeat(40);
    let store = KeyStore::open(dir.path(), Some(master.clone())).unwrap().0;
    for _ in 0..2 {
        assert_eq!(store.authenticate(&master, local()), Ok(Principal::Master));
    }
    let almost = format!("{}n", &master[..39]);
    assert_eq!(
        store.authenticate(&almost, local()),
        Err(AuthError::Unauthenticated)
    );
}

#[test]
fn a_tenant_admin_revokes_only_its_own_tenants_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (acme_key, acme_secret) = create(&store, "acme", Role::Wms);
    let (globex_key, globex_secret) = create(&store, "globex", Role::Wms);

    assert!(matches!(
        store.revoke(&globex_key.id, Some(&tenant("acme"))),
        Err(KeyError::NotFound)
    ));
    assert!(store.authenticate(&globex_secret, local()).is_ok());
    assert!(matches!(
        store.revoke("key_000000000000000000000000", None),
        Err(KeyError::NotFound)
    ));

    store.revoke(&acme_key.id, Some(&tenant("acme"))).unwrap();
    store
        .revoke(&acme_key.id, Some(&tenant("acme")))
        .expect("revoking twice is fine");
    assert_eq!(
        store.authenticate(&acme_secret, local()),
        Err(AuthError::Unauthenticated)
    );
    // The master key may revoke any key.
    store.revoke(&globex_key.id, None).unwrap();
    assert_eq!(
        store.authenticate(&globex_secret, local()),
        Err(AuthError::Unauthenticated)
    );
}

#[test]
fn list_filters_by_tenant_in_creation_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a1 = create(&store, "acme", Role::Admin).0;
    let g = create(&store, "globex", Role::Admin).0;
    let a2 = create(&store, "acme", Role::Reader).0;
    assert_eq!(
        store.list(Some(&tenant("acme"))),
        vec![a1.clone(), a2.clone()]
    );
    assert_eq!(store.list(Some(&tenant("globex"))), vec![g.clone()]);
    assert_eq!(store.list(None), vec![a1, g, a2]);
    assert!(store.list(Some(&tenant("nobody"))).is_empty());
}

#[test]
fn a_key_with_cidrs_is_forbidden_from_other_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let cidrs = vec![
        "10.0.0.0/8".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ];
    let (_, secret) = store
        .create(Some(tenant("acme")), Role::Wms, vec![], vec![], cidrs, 0)
        .unwrap();
    for ok in ["10.1.2.3", "::ffff:10.0.0.1", "2001:db8::7"] {
        assert!(store.authenticate(&secret, ip(ok)).is_ok(), "{ok}");
    }
    for no in ["192.168.1.1", "11.0.0.1", "::1", "2001:db9::1"] {
        assert_eq!(
            store.authenticate(&secret, ip(no)),
            Err(AuthError::Forbidden),
            "{no}"
        );
    }
    // An unknown key from a foreign address is still a 401, not a 403: nothing leaks.
    assert_eq!(
        store.authenticate("dpk_unknown", ip("192.168.1.1")),
        Err(AuthError::Unauthenticated)
    );
}

#[test]
fn scopes_past_their_limits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let cidrs = vec!["10.0.0.0/8".parse().unwrap(); 65];
    let err = store
        .create(Some(tenant("acme")), Role::Wms, vec![], vec![], cidrs, 0)
        .unwrap_err();
    assert!(matches!(err, KeyError::Invalid { ref field, .. } if field == "cidrs"));
}

#[test]
fn a_damaged_key_file_stops_the_open_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(KEYS_FILE), b"{\"version\": 1, \"keys\": [").unwrap();
    let err = KeyStore::open(dir.path(), Some(MASTER.into())).unwrap_err();
    assert!(matches!(err, KeyError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(KEYS_FILE), "{err}");
    // Nor is a master key generated (and lost unprinted) by a start that fails.
    assert!(KeyStore::open(dir.path(), None).is_err());
    assert!(!dir.path().join(MASTER_KEY_FILE).exists());

    std::fs::write(
        dir.path().join(KEYS_FILE),
        br#"{"version": 1, "keys": [{"id": "key_1", "tenant": "acme", "role": "admin",
            "created_at_ms": 0, "secret_sha256": "nothex"}]}"#,
    )
    .unwrap();
    let err = KeyStore::open(dir.path(), Some(MASTER.into())).unwrap_err();
    assert!(err.to_string().contains("secret_sha256"), "{err}");
}

#[test]
fn concurrent_creates_and_authentications_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut made = Vec::new();
                for i in 0..25 {
                    let (rec, secret) = create(&store, &format!("tenant-{t}"), Role::Reader);
                    assert_eq!(
                        store.authenticate(&secret, local()),
                        Ok(Principal::Key(Arc::new(rec.clone()))),
                        "thread {t} key {i}"
                    );
                    made.push((rec, secret));
                }
                made
            })
        })
        .collect();
    let made: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(made.len(), 100);
    let mut ids: Vec<_> = made.iter().map(|(r, _)| r.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 100, "ids are unique");
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.list(None).len(), 100);
    for (rec, secret) in &made {
        assert_eq!(
            store.authenticate(secret, local()),
            Ok(Principal::Key(Arc::new(rec.clone())))
        );
    }
}

#[test]
fn a_change_whose_file_write_fails_is_undone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (kept, kept_secret) = create(&store, "acme", Role::Admin);
    // A directory where the temporary file must go makes every write fail.
    let blocker = dir.path().join(format!("{KEYS_FILE}.tmp"));
    std::fs::create_dir(&blocker).unwrap();
    let err = store
        .create(
            Some(tenant("acme")),
            Role::Reader,
            vec![],
            vec![],
            vec![],
            0,
        )
        .unwrap_err();
    assert!(matches!(err, KeyError::Io { .. }), "{err}");
    assert_eq!(
        store.list(None),
        vec![kept.clone()],
        "the failed key is gone"
    );
    assert!(matches!(
        store.revoke(&kept.id, None),
        Err(KeyError::Io { .. })
    ));
    assert!(
        store.authenticate(&kept_secret, local()).is_ok(),
        "a revocation that was not written is undone"
    );
    std::fs::remove_dir(&blocker).unwrap();
    store.revoke(&kept.id, None).unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.list(None).len(), 1);
    assert!(store.get(&kept.id).unwrap().revoked);
}
