//! AWS Signature Version 4, checked, for Lambda's Invoke route on TCP: a real boto3 signs
//! every request, and one given the API token as its secret access key (any access key id)
//! signs requests this module accepts, so functions in baseline VMs call others without a
//! code change.
//!
//! ```text
//!  Authorization: AWS4-HMAC-SHA256 Credential=<key id>/<date>/<region>/<service>/aws4_request,
//!                 SignedHeaders=host;x-amz-date;..., Signature=<64 hex digits>
//!  canonical request = METHOD \n path (percent-encoded again) \n query (pairs sorted) \n
//!                      each signed header as name:value \n \n signed headers \n hex(sha256(body))
//!  string to sign    = AWS4-HMAC-SHA256 \n x-amz-date \n date/region/service/aws4_request \n
//!                      hex(sha256(canonical request))
//!  signing key       = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service),
//!                           "aws4_request")
//!  signature         = hex(HMAC(signing key, string to sign)), compared in constant time
//! ```
//! The body is always hashed (a request signed with `UNSIGNED-PAYLOAD` is refused), and
//! `x-amz-date` must be within [`MAX_SKEW`] of the host's clock, as AWS requires.

use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, Method};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// How far a request's `x-amz-date` may be from now.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// The only algorithm accepted.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Why a signed request is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigV4Error {
    /// The Authorization header, or a header it names, is not as SigV4 has it.
    #[error("Malformed SigV4 request: {0}")]
    Malformed(&'static str),
    /// `x-amz-date` is too far from the host's clock.
    #[error("The request's x-amz-date is more than 15 minutes from the host's clock")]
    Skewed,
    /// The signature is not the one the token makes.
    #[error("The signature does not match: sign with the API token as the secret access key")]
    Mismatch,
}

/// The parts of a request the signature covers.
#[derive(Debug)]
pub struct Signed<'a> {
    pub method: &'a Method,
    /// The path as received (percent-encoded).
    pub path: &'a str,
    /// The query as received, if any.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// Checks the SigV4 `authorization` of `request` against `secret`, at `now`.
pub fn verify(
    secret: &[u8],
    authorization: &str,
    request: &Signed<'_>,
    now: SystemTime,
) -> Result<(), SigV4Error> {
    let fields = authorization
        .strip_prefix(ALGORITHM)
        .and_then(|rest| rest.strip_prefix(' '))
        .ok_or(SigV4Error::Malformed("not AWS4-HMAC-SHA256"))?;
    let field = |name: &str| {
        fields
            .split(',')
            .map(str::trim)
            .find_map(|f| f.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .ok_or(SigV4Error::Malformed("Credential, SignedHeaders or Signature missing"))
    };
    let (credential, signed_headers) = (field("Credential")?, field("SignedHeaders")?);
    let signature = hex_decode(field("Signature")?).ok_or(SigV4Error::Malformed("Signature"))?;
    let (_key_id, scope) = credential.split_once('/').ok_or(SigV4Error::Malformed("Credential"))?;
    let [date, region, service, "aws4_request"] = *scope.split('/').collect::<Vec<_>>() else {
        return Err(SigV4Error::Malformed("Credential"));
    };
    let amz_date = header(request.headers, "x-amz-date")?;
    if !amz_date.starts_with(date) || date.len() != 8 {
        return Err(SigV4Error::Malformed("Credential date is not x-amz-date's"));
    }
    let at = chrono::NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ")
        .map_err(|_| SigV4Error::Malformed("x-amz-date"))?;
    let at = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(at.and_utc().timestamp()).unwrap_or_default());
    let skew = match now.duration_since(at) {
        Ok(after) => after,
        Err(before) => before.duration(),
    };
    if skew > MAX_SKEW {
        return Err(SigV4Error::Skewed);
    }
    let names: Vec<&str> = signed_headers.split(';').collect();
    if !names.contains(&"host") {
        return Err(SigV4Error::Malformed("host is not signed"));
    }
    let mut canonical = format!(
        "{}\n{}\n{}\n",
        request.method,
        encode_path(request.path),
        canonical_query(request.query.unwrap_or_default())
    );
    for name in &names {
        let values: Vec<String> = request
            .headers
            .get_all(*name)
            .iter()
            .map(|v| v.to_str().map(|v| v.split_whitespace().collect::<Vec<_>>().join(" ")))
            .collect::<Result<_, _>>()
            .map_err(|_| SigV4Error::Malformed("a signed header is not text"))?;
        if values.is_empty() {
            return Err(SigV4Error::Malformed("a signed header is missing"));
        }
        canonical += &format!("{name}:{}\n", values.join(","));
    }
    let body_hash = hex(&Sha256::digest(request.body));
    if request.headers.get("x-amz-content-sha256").is_some_and(|v| v != body_hash.as_str()) {
        return Err(SigV4Error::Mismatch);
    }
    canonical += &format!("\n{signed_headers}\n{body_hash}");
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = [b"AWS4", secret].concat();
    for part in [date, region, service, "aws4_request"] {
        key = mac(&key).chain_update(part.as_bytes()).finalize().into_bytes().to_vec();
    }
    mac(&key)
        .chain_update(string_to_sign.as_bytes())
        .verify_slice(&signature)
        .map_err(|_| SigV4Error::Mismatch)
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    Hmac::new_from_slice(key).expect("HMAC accepts any key length")
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, SigV4Error> {
    let value = headers.get(name).ok_or(SigV4Error::Malformed("x-amz-date missing"))?;
    value.to_str().map_err(|_| SigV4Error::Malformed("x-amz-date"))
}

/// The path percent-encoded once more, as SigV4 wants it for every service but S3.
fn encode_path(path: &str) -> String {
    let mut encoded = String::with_capacity(path.len());
    for byte in path.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                encoded.push(byte as char)
            }
            _ => encoded += &format!("%{byte:02X}"),
        }
    }
    encoded
}

/// The query's `name=value` pairs, sorted.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(&str, &str)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .collect();
    pairs.sort_unstable();
    let pairs: Vec<String> = pairs.iter().map(|(name, value)| format!("{name}={value}")).collect();
    pairs.join("&")
}

/// `bytes` in lowercase hex.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const SECRET: &[u8] = b"a-token-of-at-least-16-chars";
    const PATH: &str = "/2015-03-31/functions/chain-a/invocations";
    const BODY: &[u8] = br#"{"next": ["chain-b"]}"#;
    /// What botocore 1.44 signed for this request at 2026-12-01T12:00:00Z with `SECRET`.
    const AUTHORIZATION: &str = "AWS4-HMAC-SHA256 \
        Credential=nexus/20261201/us-east-1/lambda/aws4_request, \
        SignedHeaders=host;x-amz-date;x-amz-invocation-type, \
        Signature=0678ffda1d692f530930cd0ff59fc6d67229b048a45d67034dbae73131a7bb26";

    fn headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("127.0.0.1:9464"));
        headers.insert("x-amz-date", HeaderValue::from_static("20261201T120000Z"));
        headers.insert("x-amz-invocation-type", HeaderValue::from_static("RequestResponse"));
        headers.insert("user-agent", HeaderValue::from_static("Boto3/1.44.18"));
        headers
    }

    fn signed_at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_126_400)
    }

    fn check(
        headers: &HeaderMap,
        body: &[u8],
        secret: &[u8],
        now: SystemTime,
    ) -> Result<(), SigV4Error> {
        let request = Signed { method: &Method::POST, path: PATH, query: None, headers, body };
        verify(secret, AUTHORIZATION, &request, now)
    }

    #[test]
    fn a_request_botocore_signed_with_the_token_passes() {
        check(&headers(), BODY, SECRET, signed_at()).unwrap();
        check(&headers(), BODY, SECRET, signed_at() + Duration::from_secs(600)).unwrap();
        // An unsigned header may change (proxies add some).
        let mut more = headers();
        more.insert("user-agent", HeaderValue::from_static("other"));
        check(&more, BODY, SECRET, signed_at()).unwrap();
    }

    #[test]
    fn anything_changed_fails() {
        let mismatch = Err(SigV4Error::Mismatch);
        assert_eq!(check(&headers(), BODY, b"another-token-of-some-length", signed_at()), mismatch);
        assert_eq!(check(&headers(), br#"{"next": []}"#, SECRET, signed_at()), mismatch);
        let mut changed = headers();
        changed.insert("x-amz-invocation-type", HeaderValue::from_static("Event"));
        assert_eq!(check(&changed, BODY, SECRET, signed_at()), mismatch);
        let mut unsigned_body = headers();
        unsigned_body.insert("x-amz-content-sha256", HeaderValue::from_static("UNSIGNED-PAYLOAD"));
        assert_eq!(check(&unsigned_body, BODY, SECRET, signed_at()), mismatch);
        let other_path = Signed {
            method: &Method::POST,
            path: "/2015-03-31/functions/chain-b/invocations",
            query: None,
            headers: &headers(),
            body: BODY,
        };
        assert_eq!(verify(SECRET, AUTHORIZATION, &other_path, signed_at()), mismatch);
    }

    #[test]
    fn an_old_or_future_request_fails() {
        let late = signed_at() + MAX_SKEW + Duration::from_secs(1);
        assert_eq!(check(&headers(), BODY, SECRET, late), Err(SigV4Error::Skewed));
        let early = signed_at() - MAX_SKEW - Duration::from_secs(1);
        assert_eq!(check(&headers(), BODY, SECRET, early), Err(SigV4Error::Skewed));
    }

    #[test]
    fn malformed_authorizations_fail() {
        let request = Signed {
            method: &Method::POST,
            path: PATH,
            query: None,
            headers: &headers(),
            body: BODY,
        };
        let scope = "AWS4-HMAC-SHA256 Credential=nexus/20261201/us-east-1/lambda/aws4_request";
        for bad in [
            "Bearer x".to_owned(),
            scope.to_owned(),
            format!("{}, SignedHeaders=host, Signature=00", scope.replace("/aws4_request", "")),
            format!("{}, SignedHeaders=host, Signature=00", scope.replace("1201", "1202")),
            format!("{scope}, SignedHeaders=x-amz-date, Signature=00"),
            format!("{scope}, SignedHeaders=host;x-missing, Signature=00"),
            format!("{scope}, SignedHeaders=host, Signature=zz"),
        ] {
            let error = verify(SECRET, &bad, &request, signed_at()).unwrap_err();
            assert!(matches!(error, SigV4Error::Malformed(_)), "{bad}: {error}");
        }
    }

    #[test]
    fn paths_and_queries_take_their_canonical_form() {
        assert_eq!(encode_path("/a b/%41~x"), "/a%20b/%2541~x");
        assert_eq!(canonical_query("b=2&a=1&a=0&c"), "a=0&a=1&b=2&c=");
        assert_eq!(canonical_query(""), "");
        assert_eq!(hex_decode("0aff"), Some(vec![10, 255]));
        assert_eq!(hex_decode("0af"), None);
    }
}
