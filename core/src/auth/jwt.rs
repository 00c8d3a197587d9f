//! JSON Web Tokens: the keys they may be signed with (`--jwt-secret`,
//! `--jwt-public-key`, `--jwks-file`) and their verification (signature,
//! `exp`, `nbf`, `aud`). `alg: none` is never accepted, and a key only
//! verifies the algorithms of its own kind, so an RSA public key cannot be
//! used as an HMAC secret.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashSet;

const HMAC: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// A key and the algorithms it verifies.
struct Key {
    /// The JWKS `kid`; a token naming a `kid` is checked only with keys of that id.
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
    /// Where the key came from, for messages.
    source: String,
}

/// Verifies tokens against the configured keys.
pub struct Verifier {
    keys: Vec<Key>,
    audience: Vec<String>,
    leeway: u64,
}

/// The claims walcast reads.
#[derive(Debug, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub sub: Option<String>,
    pub exp: u64,
    #[serde(default)]
    pub walcast: Option<serde_json::Value>,
}

/// Where keys come from.
#[derive(Debug, Default, Clone)]
pub struct KeySources {
    /// HS256/384/512 secret (the bytes of the string).
    pub secret: Option<String>,
    /// A PEM file: an RSA or EC public key.
    pub public_key: Option<std::path::PathBuf>,
    /// A JSON Web Key Set file (`{"keys":[...]}`).
    pub jwks: Option<std::path::PathBuf>,
    /// Accepted `aud` values (empty: `aud` is not checked).
    pub audience: Vec<String>,
    /// Seconds of clock difference allowed on `exp` and `nbf`.
    pub leeway: u64,
}

/// Why the configured keys cannot be used (the proxy does not start).
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyError {
    /// `--jwt-secret` is shorter than 32 bytes: its length.
    #[error("--jwt-secret is {0} bytes: use at least 32 random bytes")]
    ShortSecret(usize),
    /// `--jwt-public-key` cannot be read or is not a public key.
    #[error("--jwt-public-key {}: {reason}", .path.display())]
    PublicKey {
        path: std::path::PathBuf,
        reason: String,
    },
    /// `--jwks-file` cannot be read or is not a usable key set.
    #[error("--jwks-file {}: {reason}", .path.display())]
    Jwks {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// Why a token was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, or a header this proxy does not take (`alg: none` among them).
    #[error("the token is not a JWT this proxy accepts (malformed, or an algorithm it does not take: \"none\" never is)")]
    Malformed,
    /// No configured key verifies the token's algorithm (and `kid`, when it names one).
    #[error(
        "no key on this proxy verifies {alg:?} tokens{}",
        .kid.as_ref().map(|k| format!(" with kid {k:?}")).unwrap_or_default()
    )]
    NoKey { alg: Algorithm, kid: Option<String> },
    /// Past its `exp`.
    #[error("the token expired (exp)")]
    Expired,
    /// Before its `nbf`.
    #[error("the token is not valid yet (nbf)")]
    NotYet,
    /// Its `aud` is none of the accepted ones.
    #[error("the token is for another audience (aud must be one of {})", .accepted.join(", "))]
    Audience { accepted: Vec<String> },
    /// A claim that must be there is missing: its name.
    #[error("the token has no {0:?} claim")]
    MissingClaim(String),
    /// The signature does not verify with the key (where it came from).
    #[error("the token's signature does not verify with {0}")]
    Signature(String),
    /// The claims do not have the types walcast reads.
    #[error("the token's claims are not as expected: {0}")]
    Claims(std::sync::Arc<serde_json::Error>),
    /// Anything else the JWT library refuses.
    #[error("the token is invalid: {0}")]
    Invalid(jsonwebtoken::errors::Error),
}

impl Verifier {
    /// The verifier for `sources`; `None` when no key is configured.
    pub fn new(sources: &KeySources) -> Result<Option<Verifier>, KeyError> {
        let mut keys = Vec::new();
        if let Some(secret) = &sources.secret {
            if secret.len() < 32 {
                return Err(KeyError::ShortSecret(secret.len()));
            }
            keys.push(Key {
                kid: None,
                key: DecodingKey::from_secret(secret.as_bytes()),
                algorithms: HMAC.to_vec(),
                source: "--jwt-secret".into(),
            });
        }
        if let Some(path) = &sources.public_key {
            let public_key = |reason: String| KeyError::PublicKey {
                path: path.clone(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| public_key(e.to_string()))?;
            keys.push(pem_key(&pem).map_err(public_key)?);
        }
        if let Some(path) = &sources.jwks {
            let jwks = |reason: String| KeyError::Jwks {
                path: path.clone(),
                reason,
            };
            let text = std::fs::read(path).map_err(|e| jwks(e.to_string()))?;
            keys.extend(jwks_keys(&text).map_err(jwks)?);
        }
        if keys.is_empty() {
            return Ok(None);
        }
        Ok(Some(Verifier {
            keys,
            audience: sources.audience.clone(),
            leeway: sources.leeway,
        }))
    }

    /// Seconds of clock difference allowed on `exp` and `nbf`.
    pub fn leeway(&self) -> u64 {
        self.leeway
    }

    /// The token's claims when it verifies; otherwise what is wrong with it.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::Json(_)
            | ErrorKind::Base64(_)
            | ErrorKind::Utf8(_)
            | ErrorKind::InvalidToken => TokenError::Malformed,
            _ => TokenError::Invalid(e),
        })?;
        let candidates = self
            .keys
            .iter()
            .filter(|k| k.algorithms.contains(&header.alg))
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            });
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.required_spec_claims = HashSet::from(["exp".to_owned()]);
        if self.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audience);
            validation.required_spec_claims.insert("aud".to_owned());
        }
        let mut last = None;
        for k in candidates {
            match jsonwebtoken::decode::<Claims>(token, &k.key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    // Claims problems are the same with any key.
                    let next_key = matches!(e.kind(), ErrorKind::InvalidSignature);
                    last = Some(match e.kind() {
                        ErrorKind::ExpiredSignature => TokenError::Expired,
                        ErrorKind::ImmatureSignature => TokenError::NotYet,
                        ErrorKind::InvalidAudience => TokenError::Audience {
                            accepted: self.audience.clone(),
                        },
                        ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
                        ErrorKind::InvalidSignature => TokenError::Signature(k.source.clone()),
                        ErrorKind::Json(e) => TokenError::Claims(e.clone()),
                        _ => TokenError::Invalid(e),
                    });
                    if !next_key {
                        break;
                    }
                }
            }
        }
        // No key was tried: none fits the token.
        Err(last.unwrap_or(TokenError::NoKey {
            alg: header.alg,
            kid: header.kid,
        }))
    }
}

/// A PEM public key: RSA (RS*, PS*) or EC P-256/P-384 (ES256/ES384).
fn pem_key(pem: &[u8]) -> Result<Key, String> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("PRIVATE KEY") {
        return Err("this is a private key: give the public key".into());
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok(Key {
            kid: None,
            key,
            algorithms: RSA.to_vec(),
            source: "--jwt-public-key".into(),
        });
    }
    match DecodingKey::from_ec_pem(pem) {
        Ok(key) => Ok(Key {
            kid: None,
            key,
            algorithms: vec![Algorithm::ES256, Algorithm::ES384],
            source: "--jwt-public-key".into(),
        }),
        Err(e) => Err(format!("not an RSA or EC public key in PEM: {e}")),
    }
}

/// The keys of a JWKS document.
fn jwks_keys(text: &[u8]) -> Result<Vec<Key>, String> {
    let set: JwkSet = serde_json::from_slice(text).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let kid = jwk.common.key_id.clone();
        let name = kid
            .as_ref()
            .map(|k| format!("kid {k:?}"))
            .unwrap_or_else(|| format!("key {i}"));
        let by_kind: Vec<Algorithm> = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => RSA.to_vec(),
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => return Err(format!("{name}: only P-256 and P-384 curves are supported")),
            },
            AlgorithmParameters::OctetKey(_) => HMAC.to_vec(),
            AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
        };
        let algorithms = match jwk.common.key_algorithm {
            None => by_kind,
            Some(a) => {
                let alg: Algorithm = a
                    .to_string()
                    .parse()
                    .map_err(|_| format!("{name}: alg {a} is not a signing algorithm"))?;
                if !by_kind.contains(&alg) {
                    return Err(format!("{name}: alg {a} does not fit the key's type"));
                }
                vec![alg]
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("{name}: {e}"))?;
        keys.push(Key {
            kid,
            key,
            algorithms,
            source: format!("the JWKS {name}"),
        });
    }
    if keys.is_empty() {
        return Err("the key set has no keys".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier(audience: &[&str]) -> Verifier {
        let sources = KeySources {
            secret: Some(SECRET.into()),
            audience: audience.iter().map(|a| a.to_string()).collect(),
            ..KeySources::default()
        };
        match Verifier::new(&sources) {
            Ok(Some(v)) => v,
            other => panic!("verifier: {:?}", other.map(|v| v.is_some())),
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn token(claims: serde_json::Value) -> String {
        match encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        ) {
            Ok(t) => t,
            Err(e) => panic!("encode: {e}"),
        }
    }

    #[test]
    fn hs256_tokens_are_checked_for_time_audience_and_signature() {
        let v = verifier(&[]);
        let ok = token(serde_json::json!({"sub": "ann", "exp": now() + 60, "walcast": {}}));
        let message = |t: &str| v.verify(t).err().map(|e| e.to_string());
        assert_eq!(
            v.verify(&ok).map(|c| c.sub).map_err(|e| e.to_string()),
            Ok(Some("ann".into()))
        );
        let expired = token(serde_json::json!({"exp": now() - 10}));
        assert_eq!(
            message(&expired).as_deref(),
            Some("the token expired (exp)")
        );
        let early = token(serde_json::json!({"exp": now() + 60, "nbf": now() + 30}));
        assert_eq!(
            message(&early).as_deref(),
            Some("the token is not valid yet (nbf)")
        );
        let no_exp = token(serde_json::json!({"sub": "x"}));
        assert!(v.verify(&no_exp).is_err());
        let mut tampered = ok.clone();
        tampered.pop();
        tampered.push(if ok.ends_with('A') { 'B' } else { 'A' });
        assert!(v.verify(&tampered).is_err());
        // alg none: header {"alg":"none"}, no signature.
        let none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            ok.split('.').nth(1).unwrap_or_default()
        );
        assert_eq!(
            message(&none).as_deref(),
            Some("the token is not a JWT this proxy accepts (malformed, or an algorithm it does not take: \"none\" never is)")
        );
        // {"alg":"RS256","kid":"k1"}: no RSA key here.
        let rs256 = format!(
            "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.{}.c2ln",
            ok.split('.').nth(1).unwrap_or_default()
        );
        assert_eq!(
            message(&rs256).as_deref(),
            Some("no key on this proxy verifies RS256 tokens with kid \"k1\"")
        );

        let aud = verifier(&["walcast"]);
        let other = token(serde_json::json!({"exp": now() + 60, "aud": "other"}));
        assert!(aud.verify(&other).is_err());
        let missing = token(serde_json::json!({"exp": now() + 60}));
        assert!(aud.verify(&missing).is_err());
        let right = token(serde_json::json!({"exp": now() + 60, "aud": ["x", "walcast"]}));
        assert!(aud.verify(&right).is_ok());
    }

    #[test]
    fn short_secrets_and_private_keys_are_refused() {
        let short = KeySources {
            secret: Some("short".into()),
            ..KeySources::default()
        };
        assert_eq!(
            Verifier::new(&short)
                .err()
                .map(|e| e.to_string())
                .as_deref(),
            Some("--jwt-secret is 5 bytes: use at least 32 random bytes")
        );
        assert!(pem_key(b"-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n").is_err());
        assert!(jwks_keys(br#"{"keys":[]}"#).is_err());
    }
}
