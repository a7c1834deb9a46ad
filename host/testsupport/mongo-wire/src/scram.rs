//! SCRAM-SHA-256 (RFC 5802 with RFC 7677's hash) as `mongod` speaks it over
//! `saslStart`/`saslContinue`.
//!
//! The server keeps only what RFC 5802 §3 calls the verifier (salt,
//! iterations, StoredKey, ServerKey), never the password. No channel binding
//! (`n,,` / `y,,` only) and no extensions, as MongoDB drivers send.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::error::{CmdResult, CommandError};

pub const MECHANISM: &str = "SCRAM-SHA-256";
/// `mongod`'s default `scramSHA256IterationCount`.
const ITERATIONS: u32 = 15_000;
/// `mongod`'s salt length for SHA-256 credentials (hash length - 4).
const SALT_LEN: usize = 28;

type HmacSha256 = Hmac<Sha256>;

/// A failed exchange: the detail is for the server's log, the client only
/// gets "Authentication failed." (as from `mongod`).
#[derive(Debug)]
pub struct ScramError(pub String);

fn fail(detail: impl Into<String>) -> ScramError {
    ScramError(detail.into())
}

/// What the server stores for one user.
#[derive(Debug, Clone)]
pub struct Credential {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn random_bytes<const N: usize>() -> CmdResult<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .map_err(|e| CommandError::internal(format!("no randomness for SCRAM: {e}")))?;
    Ok(bytes)
}

impl Credential {
    /// A new credential for `password` with a fresh salt.
    pub fn new(password: &str) -> CmdResult<Self> {
        Self::with_salt(password, random_bytes::<SALT_LEN>()?.to_vec(), ITERATIONS)
    }

    fn with_salt(password: &str, salt: Vec<u8>, iterations: u32) -> CmdResult<Self> {
        // The driver SASLprep-normalizes SCRAM-SHA-256 passwords; so must we.
        let prepared = stringprep::saslprep(password).map_err(|e| {
            CommandError::bad_value(format!("the password is not valid for SCRAM-SHA-256: {e}"))
        })?;
        let salted: [u8; 32] =
            pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(prepared.as_bytes(), &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        Ok(Credential {
            salt,
            iterations,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        })
    }
}

/// The client's first message, parsed.
#[derive(Debug)]
pub struct ClientFirst {
    /// `n,,` (or `y,,`): echoed back, base64-encoded, in the final message.
    gs2_header: String,
    bare: String,
    pub username: String,
    nonce: String,
}

/// Undoes SCRAM's `saslname` escaping (`=2C` is `,`, `=3D` is `=`).
fn unescape_name(raw: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(fail(format!("bad escape in SCRAM username {raw:?}"))),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

impl ClientFirst {
    pub fn parse(payload: &[u8]) -> Result<Self, ScramError> {
        let message = std::str::from_utf8(payload)
            .map_err(|_| fail("the client-first message is not UTF-8"))?;
        let gs2_len = match message.as_bytes() {
            [b'n' | b'y', b',', b',', ..] => 3,
            _ => {
                return Err(fail(format!(
                    "unsupported GS2 header (channel binding or authzid) in {message:?}"
                )));
            }
        };
        let bare = &message[gs2_len..];
        let mut parts = bare.split(',');
        let username = parts
            .next()
            .and_then(|p| p.strip_prefix("n="))
            .ok_or_else(|| fail("the client-first message has no username"))?;
        let nonce = parts
            .next()
            .and_then(|p| p.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or_else(|| fail("the client-first message has no nonce"))?;
        if parts.next().is_some() {
            return Err(fail("SCRAM extensions are not supported"));
        }
        Ok(ClientFirst {
            gs2_header: message[..gs2_len].to_string(),
            bare: bare.to_string(),
            username: unescape_name(username)?,
            nonce: nonce.to_string(),
        })
    }
}

/// A conversation after the server's first message, waiting for the proof.
#[derive(Debug)]
pub struct Exchange {
    credential: Credential,
    client_first: ClientFirst,
    server_first: String,
    nonce: String,
}

impl Exchange {
    /// Answers the client's first message; returns the exchange and the
    /// server-first message (`r=…,s=…,i=…`).
    pub fn start(credential: Credential, client_first: ClientFirst) -> CmdResult<(Self, String)> {
        let server_part = B64.encode(random_bytes::<24>()?);
        Ok(Self::start_with_nonce(
            credential,
            client_first,
            &server_part,
        ))
    }

    fn start_with_nonce(
        credential: Credential,
        client_first: ClientFirst,
        server_part: &str,
    ) -> (Self, String) {
        let nonce = format!("{}{server_part}", client_first.nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credential.salt),
            credential.iterations
        );
        let exchange = Exchange {
            credential,
            client_first,
            server_first: server_first.clone(),
            nonce,
        };
        (exchange, server_first)
    }

    /// Checks the client's proof; returns the server-final message
    /// (`v=<server signature>`) when it is right.
    pub fn finish(&self, payload: &[u8]) -> Result<String, ScramError> {
        let message = std::str::from_utf8(payload)
            .map_err(|_| fail("the client-final message is not UTF-8"))?;
        let (without_proof, proof) = message
            .rsplit_once(",p=")
            .ok_or_else(|| fail("the client-final message has no proof"))?;
        let mut parts = without_proof.split(',');
        let binding = parts.next().and_then(|p| p.strip_prefix("c="));
        if binding != Some(B64.encode(&self.client_first.gs2_header).as_str()) {
            return Err(fail("the channel binding does not match the GS2 header"));
        }
        if parts.next().and_then(|p| p.strip_prefix("r=")) != Some(self.nonce.as_str()) {
            return Err(fail("the nonce does not match"));
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| fail("the proof is not base64"))?;
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first.bare, self.server_first
        );
        let signature = hmac(&self.credential.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return Err(fail("the proof has the wrong length"));
        }
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        let stored_key: [u8; 32] = Sha256::digest(&client_key).into();
        // A test server: timing attacks on this comparison are no concern.
        if stored_key != self.credential.stored_key {
            return Err(fail("wrong password"));
        }
        let server_signature = hmac(&self.credential.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SCRAM-SHA-256 example exchange of RFC 7677 §3.
    #[test]
    fn rfc7677_example() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let credential = Credential::with_salt("pencil", salt, 4096).unwrap();
        let first = ClientFirst::parse(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(first.username, "user");
        let (exchange, server_first) =
            Exchange::start_with_nonce(credential, first, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
        assert_eq!(
            server_first,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let server_final = exchange
            .finish(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                  p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            )
            .unwrap();
        assert_eq!(
            server_final,
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        // One changed bit of the proof is refused.
        let wrong = exchange.finish(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
              p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVU=",
        );
        assert!(wrong.is_err());
    }

    #[test]
    fn usernames_are_unescaped_and_bad_headers_refused() {
        let first = ClientFirst::parse(b"n,,n=a=2Cb=3Dc,r=xyz").unwrap();
        assert_eq!(first.username, "a,b=c");
        assert!(ClientFirst::parse(b"p=tls-unique,,n=u,r=x").is_err());
        assert!(ClientFirst::parse(b"n,a=admin,n=u,r=x").is_err());
        assert!(ClientFirst::parse(b"n,,n=a=2,r=x").is_err());
        assert!(ClientFirst::parse(b"n,,n=u").is_err());
    }
}
