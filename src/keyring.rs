//! The keys tokens are verified with, kept fresh: the HS256 secret plus a
//! JSON Web Key Set read from a URL or a file.
//!
//! Owns fetching and swapping the set; the checking itself is `auth`'s. The
//! set is read at start, on a timer, and when a token names a `kid` no key
//! has (a rotated-in key), through `refresh::Spaced` so a flood of made-up
//! ids costs one fetch a second at most. A fetch that fails or hangs past
//! its timeout keeps the keys already held, so an identity provider's outage
//! never logs anyone out; a refresh that succeeds replaces the set whole, so
//! a key removed upstream stops verifying.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, KeySet, Principal, Verifier};
use crate::refresh::Spaced;

/// Least time between two reloads asked for by tokens with unknown key ids.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Largest key set read; real ones are a few kilobytes.
const MAX_SET_BYTES: usize = 1024 * 1024;

/// Where the key set comes from.
#[derive(Clone)]
pub enum KeySource {
    /// Fetched with GET, each fetch bounded by `timeout`.
    Url { url: String, client: reqwest::Client, timeout: Duration },
    /// Read from disk.
    File(PathBuf),
}

/// Why a key set could not be read; the message never holds key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("fetching the key set failed: {0}")]
    Fetch(String),
    #[error("the key set answered HTTP {0}")]
    Status(u16),
    #[error("the key set is over {MAX_SET_BYTES} bytes")]
    TooLarge,
    #[error("reading the key set file failed: {0}")]
    File(#[from] std::io::Error),
    #[error(transparent)]
    Parse(#[from] crate::auth::jwk::JwkError),
}

/// Cheap-clone handle to the current keys.
#[derive(Clone)]
pub struct Keyring {
    inner: Arc<Inner>,
}

struct Inner {
    verifier: RwLock<Arc<Verifier>>,
    source: Option<KeySource>,
    spaced: Spaced,
}

impl Keyring {
    /// Keys that never change (a secret and no source).
    pub fn fixed(verifier: Verifier) -> Self {
        Keyring {
            inner: Arc::new(Inner { verifier: RwLock::new(Arc::new(verifier)), source: None, spaced: Spaced::new(MIN_REFRESH_INTERVAL) }),
        }
    }

    /// The secret plus the set `source` holds now. A source that cannot be
    /// read yet is logged and retried later, not fatal: tokens signed with
    /// the secret still verify meanwhile.
    pub async fn load(secret: Option<&str>, source: Option<KeySource>) -> Self {
        let inner = Inner {
            verifier: RwLock::new(Arc::new(Verifier::with_keys(secret, KeySet::default()))),
            source,
            spaced: Spaced::new(MIN_REFRESH_INTERVAL),
        };
        let keyring = Keyring { inner: Arc::new(inner) };
        if keyring.inner.source.is_some() {
            keyring.refresh().await;
        }
        keyring
    }

    /// Verifies `token`, reloading the set once if it names a key id no key has.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        match self.current().verify(token) {
            Err(AuthError::UnknownKey(_)) if self.inner.source.is_some() => {
                self.refresh().await;
                self.current().verify(token)
            }
            result => result,
        }
    }

    /// Reloads the set (spaced, single-flight); false when it could not be read.
    pub async fn refresh(&self) -> bool {
        let Some(source) = &self.inner.source else { return false };
        self.inner.spaced.run(|| self.reload(source)).await
    }

    /// Fetches the set has been asked for since start.
    pub fn fetches(&self) -> u64 {
        self.inner.spaced.runs()
    }

    /// Reloads every `every` until `cancel`.
    pub async fn refresh_every(self, every: Duration, cancel: CancellationToken) {
        if self.inner.source.is_none() {
            return;
        }
        loop {
            tokio::select! {
                // Shutdown.
                _ = cancel.cancelled() => return,
                // Scheduled reload: drops keys removed upstream even when no new kid shows up.
                _ = tokio::time::sleep(every) => { self.refresh().await; }
            }
        }
    }

    fn current(&self) -> Arc<Verifier> {
        Arc::clone(&self.inner.verifier.read().expect("keyring lock poisoned"))
    }

    async fn reload(&self, source: &KeySource) -> bool {
        match read(source).await.and_then(|text| Ok(KeySet::parse(&text)?)) {
            Ok((keys, skipped)) => {
                for why in &skipped {
                    tracing::warn!(reason = %why, "skipped a key of the JWKS");
                }
                tracing::info!(keys = keys.len(), "loaded the JWKS");
                let next = self.current().replacing_keys(keys);
                *self.inner.verifier.write().expect("keyring lock poisoned") = Arc::new(next);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not reload the JWKS; keeping the keys already held");
                false
            }
        }
    }
}

async fn read(source: &KeySource) -> Result<String, KeyringError> {
    match source {
        KeySource::File(path) => Ok(tokio::fs::read_to_string(path).await?),
        KeySource::Url { url, client, timeout } => {
            let fetch = async {
                let mut response = client.get(url).send().await.map_err(|e| KeyringError::Fetch(e.without_url().to_string()))?;
                if !response.status().is_success() {
                    return Err(KeyringError::Status(response.status().as_u16()));
                }
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await.map_err(|e| KeyringError::Fetch(e.without_url().to_string()))? {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_SET_BYTES {
                        return Err(KeyringError::TooLarge);
                    }
                }
                Ok(String::from_utf8_lossy(&body).into_owned())
            };
            tokio::time::timeout(*timeout, fetch).await.map_err(|_| KeyringError::Fetch(format!("no answer within {timeout:?}")))?
        }
    }
}
