//! SPICE ticket authentication: a fresh RSA-1024 key per link, the ticket decrypted with
//! RSA-OAEP (SHA-1), and the password compared in constant time.

use std::sync::Arc;

use rsa::pkcs8::EncodePublicKey;
use rsa::{Oaep, RsaPrivateKey};
use tokio::sync::{mpsc, Mutex};

use crate::ServerError;

/// The SPICE client encrypts at most 60 password characters.
pub const MAX_PASSWORD_LEN: usize = 60;
/// The SubjectPublicKeyInfo DER of an RSA-1024 key with e = 65537 is exactly this long, and
/// spice-gtk reads exactly this many bytes.
pub const PUBKEY_LEN: usize = 162;
/// The encrypted ticket is one RSA-1024 block.
pub const TICKET_LEN: usize = 128;

/// How clients prove who they are.
#[derive(Clone, PartialEq, Eq)]
pub enum Ticketing {
    /// Anyone who can reach the port may connect (the ticket is still read and decrypted).
    Disabled,
    /// The client must send this password.
    Password(String),
}

impl std::fmt::Debug for Ticketing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ticketing::Disabled => f.write_str("Disabled"),
            Ticketing::Password(_) => f.write_str("Password(<redacted>)"),
        }
    }
}

impl Ticketing {
    /// Validate a password for use as a SPICE ticket.
    pub fn password(pw: impl Into<String>) -> Result<Self, ServerError> {
        let pw = pw.into();
        if pw.is_empty() {
            return Err(ServerError::Config("the password is empty".into()));
        }
        if pw.len() > MAX_PASSWORD_LEN {
            return Err(ServerError::Config(format!(
                "the password is {} bytes; SPICE clients send at most {MAX_PASSWORD_LEN}",
                pw.len()
            )));
        }
        if pw.contains('\0') {
            return Err(ServerError::Config(
                "the password contains a NUL byte".into(),
            ));
        }
        Ok(Ticketing::Password(pw))
    }
}

/// One link's key pair.
pub struct LinkKey {
    key: RsaPrivateKey,
    pub_der: [u8; PUBKEY_LEN],
}

impl LinkKey {
    pub fn generate() -> Result<Self, ServerError> {
        let mut rng = rand::thread_rng();
        let key = RsaPrivateKey::new(&mut rng, 1024)
            .map_err(|e| ServerError::Crypto(format!("RSA key generation: {e}")))?;
        let der = key
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| ServerError::Crypto(format!("public key encoding: {e}")))?;
        let pub_der: [u8; PUBKEY_LEN] = der.as_bytes().try_into().map_err(|_| {
            ServerError::Crypto(format!(
                "public key is {} bytes, expected {PUBKEY_LEN}",
                der.as_bytes().len()
            ))
        })?;
        Ok(LinkKey { key, pub_der })
    }

    pub fn public_der(&self) -> &[u8; PUBKEY_LEN] {
        &self.pub_der
    }

    /// Decrypt a ticket. `None` when it does not decrypt (wrong key, garbage).
    pub fn decrypt(&self, ticket: &[u8; TICKET_LEN]) -> Option<Vec<u8>> {
        self.key.decrypt(Oaep::new::<sha1::Sha1>(), ticket).ok()
    }
}

/// Whether a decrypted ticket (password + NUL) matches.
pub fn ticket_matches(ticketing: &Ticketing, plaintext: Option<&[u8]>) -> bool {
    match ticketing {
        Ticketing::Disabled => true,
        Ticketing::Password(pw) => {
            let Some(plain) = plaintext else {
                return false;
            };
            let given = plain.strip_suffix(b"\0").unwrap_or(plain);
            constant_time_eq(given, pw.as_bytes())
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Keeps a few RSA keys generated ahead of time on a blocking thread, so a link does not wait
/// ~10–50 ms for key generation. Each key is used for one link only, as spice-server does.
pub struct KeyPool {
    rx: Mutex<mpsc::Receiver<LinkKey>>,
}

impl KeyPool {
    /// Start the generator. `depth` keys are kept ready. Must be called inside a tokio runtime.
    pub fn start(depth: usize) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(depth.max(1));
        tokio::task::spawn_blocking(move || loop {
            let key = match LinkKey::generate() {
                Ok(k) => k,
                Err(e) => {
                    tracing::error!("key pool: {e}");
                    return;
                }
            };
            if tx.blocking_send(key).is_err() {
                return; // the pool was dropped
            }
        });
        Arc::new(KeyPool { rx: Mutex::new(rx) })
    }

    /// A fresh key: from the pool when one is ready, otherwise generated now.
    pub async fn take(&self) -> Result<LinkKey, ServerError> {
        if let Ok(k) = self.rx.lock().await.try_recv() {
            return Ok(k);
        }
        tokio::task::spawn_blocking(LinkKey::generate)
            .await
            .map_err(|e| ServerError::Crypto(format!("key generation task: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::DecodePublicKey;
    use rsa::RsaPublicKey;

    #[test]
    fn key_is_162_byte_spki_and_ticket_round_trips() {
        let k = LinkKey::generate().unwrap();
        let der = k.public_der();
        assert_eq!(der.len(), 162);
        let pubkey = RsaPublicKey::from_public_key_der(der).unwrap();
        let mut rng = rand::thread_rng();
        let ct = pubkey
            .encrypt(&mut rng, Oaep::new::<sha1::Sha1>(), b"secret\0")
            .unwrap();
        let ticket: [u8; 128] = ct.try_into().unwrap();
        let plain = k.decrypt(&ticket).unwrap();
        assert_eq!(plain, b"secret\0");
        let pw = Ticketing::password("secret").unwrap();
        assert!(ticket_matches(&pw, Some(&plain)));
        assert!(!ticket_matches(&pw, Some(b"secreT\0")));
        assert!(!ticket_matches(&pw, Some(b"\0")));
        assert!(!ticket_matches(&pw, None));
        assert!(ticket_matches(&Ticketing::Disabled, None));
        assert!(k.decrypt(&[7u8; 128]).is_none(), "garbage does not decrypt");
    }

    #[test]
    fn password_rules() {
        assert!(Ticketing::password("").is_err());
        assert!(Ticketing::password("x".repeat(61)).is_err());
        assert!(Ticketing::password("x".repeat(60)).is_ok());
        assert!(!format!("{:?}", Ticketing::password("hunter2").unwrap()).contains("hunter2"));
    }
}
