//! Secrets: tokens (random, stored as SHA-256), the server key file, and the
//! Argon2id derivation of Matrix passwords. Nothing here is ever logged.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::SecurityConfig;

/// Prefix of API tokens (the backend's).
pub const API_TOKEN_PREFIX: &str = "mca_";
/// Prefix of personal access tokens (one user's).
pub const PAT_PREFIX: &str = "mcp_";

/// A fresh token: the prefix and 32 random bytes, base64url.
#[must_use]
pub fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// SHA-256 of a token: tokens carry 256 random bits, so a fast hash is right for them.
#[must_use]
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Constant-time comparison of two hashes.
#[must_use]
pub fn hashes_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

/// Creates a directory readable by the owner only (and its parents).
///
/// # Errors
/// The directory cannot be created.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Writes a file that only the owner may read, replacing any old one atomically.
///
/// # Errors
/// The file cannot be written.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Prefix of webhook signing secrets (the Standard Webhooks convention).
pub const WEBHOOK_SECRET_PREFIX: &str = "whsec_";

/// A fresh webhook signing secret: 32 random bytes.
#[must_use]
pub fn new_webhook_secret() -> zeroize::Zeroizing<Vec<u8>> {
    let mut bytes = zeroize::Zeroizing::new(vec![0u8; 32]);
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// The secret as shown to the caller once: `whsec_` and its bytes in base64.
#[must_use]
pub fn webhook_secret_text(secret: &[u8]) -> String {
    format!("{WEBHOOK_SECRET_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(secret))
}

/// The `webhook-signature` header of a delivery (Standard Webhooks): `v1,`
/// and base64 of HMAC-SHA256 with the secret's bytes over
/// `{id}.{timestamp}.{body}`.
#[must_use]
pub fn webhook_signature(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = <hmac::Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// The server secret: 32 random bytes in a 0600 key file, created on first start.
/// Matrix passwords are derived from it, so losing it changes every password.
#[derive(Clone)]
pub struct ServerKey([u8; 32]);

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerKey(..)")
    }
}

impl ServerKey {
    /// Reads the key file, creating it when missing. The service does not
    /// use this: it creates a key only for a database that has none
    /// ([`crate::store::key_fingerprint`]); tools that seed a data
    /// directory do.
    ///
    /// # Errors
    /// The file cannot be read or written, is readable by others, or is not 32 bytes.
    pub fn load_or_create(path: &Path) -> Result<Self, String> {
        match Self::load(path)? {
            Some(key) => Ok(key),
            None => Self::create(path),
        }
    }

    /// Reads the key file; `None` when there is none.
    ///
    /// # Errors
    /// The file cannot be read, is readable by others, or is not 32 bytes.
    pub fn load(path: &Path) -> Result<Option<Self>, String> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let mode = std::fs::metadata(path).map_err(|e| e.to_string())?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(format!(
                        "{} is readable by other users (mode {:o}); run chmod 600 on it",
                        path.display(),
                        mode & 0o777
                    ));
                }
                let key: [u8; 32] =
                    bytes.try_into().map_err(|_| format!("{} is not a 32-byte key file", path.display()))?;
                Ok(Some(ServerKey(key)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Writes a new random key file (0600), replacing any old one.
    ///
    /// # Errors
    /// The directory or the file cannot be written.
    pub fn create(path: &Path) -> Result<Self, String> {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        if let Some(dir) = path.parent() {
            create_private_dir(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        write_private_file(path, &key).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(ServerKey(key))
    }

    /// What the database keeps to recognise this key: HMAC-SHA256 of the key
    /// over a label of its own, so it tells nothing about the key nor about
    /// anything else derived from it.
    #[must_use]
    pub fn fingerprint(&self) -> [u8; 32] {
        use hmac::Mac;
        let mut mac = <hmac::Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"messenger-chat secret.key fingerprint v1");
        mac.finalize().into_bytes().into()
    }

    /// A key for tests.
    #[must_use]
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        ServerKey(bytes)
    }

    /// The key that seals webhook secrets at rest: HMAC-SHA256 of the server
    /// key over a fixed label, so it is stable, and of no use for anything else.
    fn webhook_sealing_key(&self) -> ring::aead::LessSafeKey {
        use hmac::Mac;
        let mut mac = <hmac::Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"messenger-chat webhook secret sealing v1");
        let key = zeroize::Zeroizing::new(<[u8; 32]>::from(mac.finalize().into_bytes()));
        let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, key.as_slice())
            .expect("ChaCha20-Poly1305 takes a 32-byte key");
        ring::aead::LessSafeKey::new(unbound)
    }

    /// Seals a webhook's signing secret for storage: a random nonce, then
    /// the ciphertext and tag, bound to the webhook's id (a sealed secret
    /// copied onto another webhook does not open).
    #[must_use]
    pub fn seal_webhook_secret(&self, webhook_id: &str, secret: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let mut sealed = secret.to_vec();
        self.webhook_sealing_key()
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(webhook_id.as_bytes()),
                &mut sealed,
            )
            .expect("sealing a short secret in memory cannot fail");
        let mut out = nonce.to_vec();
        out.append(&mut sealed);
        out
    }

    /// Opens a sealed webhook secret.
    ///
    /// # Errors
    /// Another server key, another webhook's secret, or damaged bytes.
    pub fn open_webhook_secret(&self, webhook_id: &str, sealed: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
        let (nonce, rest) = sealed.split_at_checked(12).ok_or("the sealed secret is too short")?;
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce")?;
        let mut buf = zeroize::Zeroizing::new(rest.to_vec());
        let len = self
            .webhook_sealing_key()
            .open_in_place(nonce, ring::aead::Aad::from(webhook_id.as_bytes()), &mut buf)
            .map_err(|_| "the secret does not open with this server key".to_string())?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    /// The Matrix password of `account` (a full Matrix user id): Argon2id of
    /// the server key, salted with the account, so it is stable across calls
    /// and never stored. CPU- and memory-heavy: call it off the async workers.
    ///
    /// # Errors
    /// Argon2 parameters out of range (checked at start-up).
    pub fn matrix_password(&self, security: &SecurityConfig, account: &str) -> Result<String, String> {
        self.matrix_password_in(security, account, &mut Vec::new())
    }

    /// [`ServerKey::matrix_password`] in `memory`, grown to the size the
    /// parameters need, which the caller may hand to the next derivation
    /// instead of allocating (and faulting in) 19 MiB each time. Every block
    /// is written before it is read, so what a previous derivation left
    /// there does not matter.
    ///
    /// # Errors
    /// Argon2 parameters out of range (checked at start-up).
    pub fn matrix_password_in(
        &self,
        security: &SecurityConfig,
        account: &str,
        memory: &mut Vec<argon2::Block>,
    ) -> Result<String, String> {
        let params = argon2::Params::new(
            security.argon2_memory_kib,
            security.argon2_iterations,
            security.argon2_parallelism,
            Some(32),
        )
        .map_err(|e| e.to_string())?;
        if memory.len() < params.block_count() {
            memory.resize(params.block_count(), argon2::Block::default());
        }
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        // The salt must be at least 8 bytes; the account id is unique per user.
        let salt = format!("messenger-chat password {account}");
        let mut out = [0u8; 32];
        argon
            .hash_password_into_with_memory(&self.0, salt.as_bytes(), &mut out, memory.as_mut_slice())
            .map_err(|e| e.to_string())?;
        Ok(URL_SAFE_NO_PAD.encode(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> SecurityConfig {
        SecurityConfig { argon2_memory_kib: 64, argon2_iterations: 1, ..SecurityConfig::default() }
    }

    /// Known vectors computed independently with python3:
    /// `base64.b64encode(hmac.new(secret, b"{id}.{ts}.{body}", hashlib.sha256).digest())`.
    /// The first is the example of the Standard Webhooks specification
    /// (secret `whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw`).
    #[test]
    fn webhook_signatures_match_independent_vectors() {
        use base64::engine::general_purpose::STANDARD;
        let secret = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = webhook_signature(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, br#"{"test": 2432232314}"#);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let secret: Vec<u8> = (0u8..32).collect();
        let sig = webhook_signature(&secret, "42", 1_700_000_000, br#"{"id":42,"type":"room.created"}"#);
        assert_eq!(sig, "v1,CrHgk5CgaMtPsIwctnQAY33sKYN5+lV1BADQTg+a3kw=");
    }

    #[test]
    fn webhook_secrets_are_sealed_to_their_webhook_and_key() {
        let key = ServerKey::from_bytes([9; 32]);
        let secret = new_webhook_secret();
        assert!(webhook_secret_text(&secret).starts_with("whsec_"));
        let sealed = key.seal_webhook_secret("crm", &secret);
        assert!(!sealed.windows(secret.len()).any(|w| w == secret.as_slice()), "not in plaintext");
        assert_eq!(key.open_webhook_secret("crm", &sealed).unwrap().as_slice(), secret.as_slice());
        assert!(key.open_webhook_secret("other", &sealed).is_err(), "bound to its webhook");
        assert!(ServerKey::from_bytes([8; 32]).open_webhook_secret("crm", &sealed).is_err(), "and to the key");
        assert_ne!(key.seal_webhook_secret("crm", &secret), sealed, "a fresh nonce each time");
    }

    #[test]
    fn tokens_are_random_and_prefixed() {
        let a = new_token(PAT_PREFIX);
        let b = new_token(PAT_PREFIX);
        assert!(a.starts_with("mcp_") && a.len() == 4 + 43);
        assert_ne!(a, b);
        assert!(hashes_equal(&token_hash(&a), &token_hash(&a)));
        assert!(!hashes_equal(&token_hash(&a), &token_hash(&b)));
    }

    #[test]
    fn password_is_stable_per_account_and_key() {
        let k = ServerKey::from_bytes([7; 32]);
        let p1 = k.matrix_password(&cheap(), "@u1:hs").unwrap();
        assert_eq!(p1, k.matrix_password(&cheap(), "@u1:hs").unwrap());
        assert_ne!(p1, k.matrix_password(&cheap(), "@u2:hs").unwrap());
        assert_ne!(p1, ServerKey::from_bytes([8; 32]).matrix_password(&cheap(), "@u1:hs").unwrap());
    }

    #[test]
    fn a_reused_buffer_gives_the_same_password() {
        let k = ServerKey::from_bytes([7; 32]);
        let fresh = k.matrix_password(&cheap(), "@u1:hs").unwrap();
        // A buffer full of another derivation's blocks, larger than needed.
        let mut memory = Vec::new();
        let bigger = SecurityConfig { argon2_memory_kib: 256, ..cheap() };
        k.matrix_password_in(&bigger, "@u2:hs", &mut memory).unwrap();
        assert_eq!(memory.len(), 256);
        assert_eq!(k.matrix_password_in(&cheap(), "@u1:hs", &mut memory).unwrap(), fresh);
        assert_eq!(k.matrix_password_in(&cheap(), "@u1:hs", &mut memory).unwrap(), fresh);
    }

    #[test]
    fn key_file_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/secret.key");
        let k1 = ServerKey::load_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let k2 = ServerKey::load_or_create(&path).unwrap();
        assert_eq!(k1.0, k2.0);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(ServerKey::load_or_create(&path).unwrap_err().contains("chmod 600"));
    }

    #[test]
    fn a_missing_key_file_is_none_and_a_short_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        assert!(ServerKey::load(&path).unwrap().is_none(), "nothing is created");
        assert!(!path.exists());
        write_private_file(&path, &[1; 31]).unwrap();
        assert!(ServerKey::load(&path).unwrap_err().contains("not a 32-byte key file"));
    }

    #[test]
    fn the_fingerprint_is_stable_per_key_and_not_the_key() {
        let k = ServerKey::from_bytes([7; 32]);
        assert_eq!(k.fingerprint(), ServerKey::from_bytes([7; 32]).fingerprint());
        assert_ne!(k.fingerprint(), ServerKey::from_bytes([8; 32]).fingerprint());
        assert_ne!(k.fingerprint(), [7; 32]);
        // Not the webhook sealing key either: another label.
        use hmac::Mac;
        let mut mac = <hmac::Hmac<Sha256> as Mac>::new_from_slice(&[7; 32]).unwrap();
        mac.update(b"messenger-chat webhook secret sealing v1");
        assert_ne!(k.fingerprint(), <[u8; 32]>::from(mac.finalize().into_bytes()));
    }
}
