//! Token verification: HS256 and JWKS keys (RS256, ES256) with kid rotation, the algorithm
//! pinned per key, the required claims, and scopes. The keys under tests/keys/ are test-only.

use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use kernel::config::Settings;
use web::{ApiError, Claims, JwtKeys, Role};

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");

fn settings() -> Settings {
    let mut settings =
        Settings::embedded_at(std::path::Path::new("/tmp/unused")).expect("settings");
    settings.security.jwks = Some(format!("@{KEYS}/jwks.json"));
    settings
}

fn keys() -> JwtKeys {
    JwtKeys::try_new(&settings().security).expect("the test JWKS loads")
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(format!("{KEYS}/{name}")).expect("test key")
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Claims, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, key).expect("sign")
}

fn claims() -> Claims {
    keys().claims("alice", Role::Writer, Duration::from_secs(600))
}

fn rejected(token: &str) -> String {
    match keys().verify(token) {
        Err(ApiError::Unauthorized(reason)) => reason,
        other => panic!("expected 401, got {other:?}"),
    }
}

#[test]
fn rsa_keys_of_a_rotation_are_both_accepted() {
    for kid in ["rsa-old", "rsa-new"] {
        let key = EncodingKey::from_rsa_pem(&pem(&format!("{kid}.pem"))).expect("rsa key");
        let token = sign(Algorithm::RS256, Some(kid), &claims(), &key);
        assert_eq!(keys().verify(&token).expect("accepted").sub, "alice");
    }
}

#[test]
fn es256_key_is_accepted() {
    let key = EncodingKey::from_ec_pem(&pem("ec-p256.pem")).expect("ec key");
    let token = sign(Algorithm::ES256, Some("ec-p256"), &claims(), &key);
    assert_eq!(keys().verify(&token).expect("accepted").role, Role::Writer);
}

#[test]
fn a_token_signed_by_another_key_of_the_set_is_refused() {
    let key = EncodingKey::from_rsa_pem(&pem("rsa-new.pem")).expect("rsa key");
    let token = sign(Algorithm::RS256, Some("rsa-old"), &claims(), &key);
    assert!(rejected(&token).contains("signature"));
}

#[test]
fn unknown_kid_is_refused() {
    let key = EncodingKey::from_rsa_pem(&pem("rsa-old.pem")).expect("rsa key");
    let token = sign(Algorithm::RS256, Some("retired"), &claims(), &key);
    assert!(rejected(&token).contains("kid"));
}

#[test]
fn hs_rs_confusion_is_refused() {
    // HS256 "signed" with the RSA key's public JWK material as the HMAC secret, naming the RSA kid.
    let jwks: serde_json::Value = serde_json::from_slice(&pem("jwks.json")).expect("jwks json");
    let modulus = jwks["keys"][0]["n"]
        .as_str()
        .expect("n")
        .as_bytes()
        .to_vec();
    let token = sign(
        Algorithm::HS256,
        Some("rsa-old"),
        &claims(),
        &EncodingKey::from_secret(&modulus),
    );
    assert!(rejected(&token).contains("algorithm"));
    // And an RS256 token without kid is checked against the HS256 secret: refused.
    let key = EncodingKey::from_rsa_pem(&pem("rsa-old.pem")).expect("rsa key");
    let token = sign(Algorithm::RS256, None, &claims(), &key);
    assert!(rejected(&token).contains("algorithm"));
}

#[test]
fn alg_none_is_refused() {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = b64.encode(serde_json::to_vec(&claims()).expect("claims"));
    for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
        let reason = rejected(&token);
        assert!(!reason.contains(&body), "the token is never echoed");
    }
}

#[test]
fn required_claims_and_times_are_enforced() {
    let keys = keys();
    let mut expired = claims();
    expired.exp = 1_000;
    expired.iat = 900;
    assert!(rejected(&keys.mint_claims(&expired).expect("mint")).contains("expired"));

    let mut early = claims();
    early.nbf = Some(early.iat + 3_600);
    assert!(rejected(&keys.mint_claims(&early).expect("mint")).contains("nbf"));

    let mut wrong_audience = claims();
    wrong_audience.aud = "someone-else".into();
    assert!(rejected(&keys.mint_claims(&wrong_audience).expect("mint")).contains("audience"));

    let mut wrong_issuer = claims();
    wrong_issuer.iss = "mallory".into();
    assert!(rejected(&keys.mint_claims(&wrong_issuer).expect("mint")).contains("issuer"));

    // No exp at all.
    let secret = EncodingKey::from_secret(settings().security.jwt_secret.as_bytes());
    let mut no_exp = serde_json::to_value(claims()).expect("claims");
    no_exp.as_object_mut().expect("object").remove("exp");
    let token = encode(&Header::new(Algorithm::HS256), &no_exp, &secret).expect("sign");
    rejected(&token);
}

#[test]
fn a_bad_jwks_is_an_error_at_start() {
    let mut settings = settings();
    settings.security.jwks = Some(r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#.into());
    assert!(
        JwtKeys::try_new(&settings.security).is_err(),
        "a key without kid/alg"
    );
    settings.security.jwks = Some("@/nonexistent/jwks.json".into());
    assert!(JwtKeys::try_new(&settings.security).is_err());
}

#[test]
fn scopes_restrict_contexts() {
    let mut scoped = claims();
    scoped.scope = Some("memento".into());
    assert!(scoped.allow(Role::Writer, "memento").is_ok());
    assert!(matches!(
        scoped.allow(Role::Writer, "repository"),
        Err(ApiError::Forbidden(_))
    ));
    assert!(matches!(
        scoped.allow(Role::Admin, "memento"),
        Err(ApiError::Forbidden(_))
    ));
    assert!(
        claims().allow(Role::Reader, "repository").is_ok(),
        "no scope: every context"
    );
}

/// A verified token is remembered, but never past its expiry: once `exp` (plus the leeway,
/// here 0) has passed, the same token is refused like any expired one.
#[test]
fn a_remembered_token_still_expires() {
    let mut settings = settings();
    settings.security.leeway = Duration::ZERO;
    let keys = JwtKeys::try_new(&settings.security).expect("keys");
    let mut claims = keys.claims("alice", Role::Reader, Duration::from_secs(1));
    claims.exp = chrono::Utc::now().timestamp() as u64 + 1;
    let token = keys.mint_claims(&claims).expect("mint");
    assert_eq!(keys.verify(&token).expect("fresh").sub, "alice");
    assert_eq!(keys.verify(&token).expect("remembered").sub, "alice");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match keys.verify(&token) {
            Err(ApiError::Unauthorized(reason)) => {
                assert!(reason.contains("expired"), "{reason}");
                break;
            }
            Ok(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            other => panic!("still accepted after its expiry: {other:?}"),
        }
    }
    // A token differing from a remembered one in its signature is checked in full.
    let token = keys
        .mint("bob", Role::Reader, Duration::from_secs(600))
        .expect("mint");
    keys.verify(&token).expect("valid");
    let mut forged = token.clone().into_bytes();
    let at = forged.len() - 10;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ascii");
    assert!(matches!(
        keys.verify(&forged),
        Err(ApiError::Unauthorized(_))
    ));
}
