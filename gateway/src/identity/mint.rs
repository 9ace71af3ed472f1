//! Minting tokens with ephemeral keys: the development issuer of `agentgate dev`, the tests and the
//! benchmarks. NOT for production: keys live in memory only and nothing here checks what it signs.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A private signing key with its public JWK.
pub struct SigningKey {
    alg: Algorithm,
    kid: String,
    encoding: EncodingKey,
    public: Value,
    pkcs8_pem: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh RSA-2048 key for RS256.
    pub fn rsa(kid: &str) -> Result<Self, String> {
        let pair =
            aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(|e| e.to_string())?;
        let der = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair)
            .map_err(|e| e.to_string())?;
        let pem = pem_wrap("PRIVATE KEY", der.as_ref());
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
        Self::finish(Algorithm::RS256, kid, encoding, pem)
    }

    /// A fresh P-256 key for ES256.
    pub fn ec(kid: &str) -> Result<Self, String> {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|e| e.to_string())?;
        // Sanity: the document parses as a key pair.
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .map_err(|e| e.to_string())?
            .public_key();
        let encoding = EncodingKey::from_ec_der(pkcs8.as_ref());
        Self::finish(
            Algorithm::ES256,
            kid,
            encoding,
            pem_wrap("PRIVATE KEY", pkcs8.as_ref()),
        )
    }

    fn finish(alg: Algorithm, kid: &str, encoding: EncodingKey, pkcs8_pem: String) -> Result<Self, String> {
        let jwk = Jwk::from_encoding_key(&encoding, alg).map_err(|e| e.to_string())?;
        let mut public = serde_json::to_value(&jwk).map_err(|e| e.to_string())?;
        let obj = public.as_object_mut().ok_or("JWK is not an object")?;
        obj.retain(|k, _| matches!(k.as_str(), "kty" | "crv" | "x" | "y" | "n" | "e"));
        obj.insert("kid".into(), json!(kid));
        obj.insert("use".into(), json!("sig"));
        obj.insert("alg".into(), json!(format!("{alg:?}")));
        Ok(Self {
            alg,
            kid: kid.to_string(),
            encoding,
            public,
            pkcs8_pem,
        })
    }

    /// The private key as PKCS#8 PEM (for `private_key_jwt` clients in tests).
    pub fn private_pem(&self) -> &str {
        &self.pkcs8_pem
    }

    /// The algorithm this key signs with.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK (with `kid`, `use` and `alg`).
    pub fn public_jwk(&self) -> &Value {
        &self.public
    }

    /// A JWKS document of public keys.
    pub fn jwks(keys: &[&SigningKey]) -> Value {
        json!({ "keys": keys.iter().map(|k| k.public.clone()).collect::<Vec<_>>() })
    }

    /// RFC 7638 thumbprint of the public key.
    pub fn thumbprint(&self) -> String {
        super::dpop::thumbprint(&self.public).expect("generated keys have every member")
    }

    /// Signs `claims` under `header` (whose `alg` is set to this key's unless the header has one).
    pub fn sign_with_header(&self, mut header: Value, claims: &Value) -> String {
        if header.get("alg").is_none() {
            header["alg"] = json!(format!("{:?}", self.alg));
        }
        self.sign_raw(header.to_string().as_bytes(), claims.to_string().as_bytes())
    }

    /// Signs a token made of `header` and `claims` exactly as given (tests also pass bytes that
    /// are not JSON, to present well-signed tokens carrying anything).
    pub fn sign_raw(&self, header: &[u8], claims: &[u8]) -> String {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &self.encoding, self.alg)
            .expect("signing with a valid key");
        format!("{message}.{signature}")
    }

    /// An access token: `typ: at+jwt`, this key's `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(json!({"typ": "at+jwt", "kid": self.kid}), claims)
    }

    /// A DPoP proof for `method url` bound to `access_token`.
    pub fn dpop_proof(&self, method: &str, url: &str, access_token: &str, iat: i64, jti: &str) -> String {
        self.sign_proof(&proof_claims(method, url, access_token, iat, jti))
    }

    fn sign_proof(&self, claims: &Value) -> String {
        self.sign_with_header(json!({"typ": "dpop+jwt", "jwk": self.public}), claims)
    }

    /// The same, carrying `nonce` (the gateway's `DPoP-Nonce`).
    pub fn dpop_proof_with_nonce(
        &self,
        (method, url): (&str, &str),
        access_token: &str,
        iat: i64,
        jti: &str,
        nonce: &str,
    ) -> String {
        let mut claims = proof_claims(method, url, access_token, iat, jti);
        claims["nonce"] = json!(nonce);
        self.sign_proof(&claims)
    }

    /// A DPoP proof for a token request (no access token yet, so no `ath`).
    pub fn dpop_token_request_proof(&self, url: &str, iat: i64, jti: &str) -> String {
        self.sign_with_header(
            json!({"typ": "dpop+jwt", "jwk": self.public}),
            &json!({"jti": jti, "htm": "POST", "htu": url, "iat": iat}),
        )
    }
}

/// A DPoP proof's claims for `method url`, bound to `access_token` by its hash.
fn proof_claims(method: &str, url: &str, access_token: &str, iat: i64, jti: &str) -> Value {
    let ath = URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.as_bytes()));
    json!({"jti": jti, "htm": method, "htu": url, "iat": iat, "ath": ath})
}

fn pem_wrap(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
