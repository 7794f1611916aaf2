//! Who may use the API on TCP (`api.listen`): anyone who holds the token in `api.token_file`.
//!
//! ```text
//!  GET /metrics                              open (Prometheus scrapes it)
//!  any other request                         Authorization: Bearer <token>
//!  POST /2015-03-31/functions/*/invocations  the above, or Lambda's SigV4 signed with the token
//!                                            as secret access key (sigv4.rs): a real boto3
//!  else                                      401 {"error": ...}, WWW-Authenticate: Bearer
//! ```
//! The token is compared in constant time. If the token file is missing, the backend writes a
//! random token into it (mode 0600) for its operators to read. The unix socket needs no token:
//! its file mode (0600) lets only the backend's user connect.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::{lambda, sigv4, ApiError};

/// The shortest token accepted.
const MIN_TOKEN_LEN: usize = 16;
/// The largest body read to check a SigV4 signature: Lambda's own limit for a synchronous
/// invocation's payload.
const MAX_SIGNED_BODY: usize = 6 << 20;

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file cannot be read.
    #[error("Cannot read api.token_file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another user owns the file, and chose the token.
    #[error("api.token_file {path} is owned by uid {owner}, neither the backend's user nor root")]
    Owner { path: PathBuf, owner: u32 },
    /// Other users may read the file.
    #[error("api.token_file {path} has mode {mode:04o}, readable by other users: chmod o-rwx it")]
    OpenToOthers { path: PathBuf, mode: u32 },
    /// A new token could not be written.
    #[error("Cannot write a new API token into api.token_file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The token is too short to be a secret.
    #[error("api.token_file {0} holds fewer than {MIN_TOKEN_LEN} characters: write a long random token into it (e.g. `openssl rand -hex 32`)")]
    TooShort(PathBuf),
}

/// The API token.
pub struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Reads the token from `path`, or writes a new random one there if there is no such file.
    pub fn load_or_create(path: &Path) -> Result<Self, TokenError> {
        match Self::load(path) {
            Err(TokenError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Self::create(path)
            }
            loaded => loaded,
        }
    }

    /// Writes a new token of 32 random bytes, in hex, into the new file `path` (mode 0600).
    fn create(path: &Path) -> Result<Self, TokenError> {
        let write = |source| TokenError::Write { path: path.to_owned(), source };
        let mut random = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut random))
            .map_err(write)?;
        let token = sigv4::hex(&random);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(write)?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .and_then(|mut file| file.write_all(token.as_bytes()))
            .map_err(write)?;
        tracing::info!(path = %path.display(), "Wrote a new API token for api.listen");
        Ok(Self(token.into_bytes()))
    }

    /// Reads the token from `path` (surrounding whitespace is not part of it); the file must
    /// not be open to other users.
    fn load(path: &Path) -> Result<Self, TokenError> {
        let read = |source| TokenError::Read { path: path.to_owned(), source };
        let metadata = std::fs::metadata(path).map_err(read)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        if metadata.uid() != uid && metadata.uid() != 0 {
            return Err(TokenError::Owner { path: path.to_owned(), owner: metadata.uid() });
        }
        let mode = metadata.mode() & 0o777;
        if mode & 0o007 != 0 {
            return Err(TokenError::OpenToOthers { path: path.to_owned(), mode });
        }
        let text = std::fs::read(path).map_err(read)?;
        let token = text.trim_ascii();
        if token.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort(path.to_owned()));
        }
        Ok(Self(token.to_vec()))
    }

    /// Whether `given` is the token, in time that does not depend on where they differ.
    fn matches(&self, given: &[u8]) -> bool {
        self.0.ct_eq(given).into()
    }
}

/// Lets a request through if it may pass (see the module doc); else answers 401.
pub async fn require_token(
    State(token): State<Arc<Token>>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() == Method::GET && request.uri().path() == "/metrics" {
        return next.run(request).await;
    }
    let authorization = request.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    match authorization {
        Some(value) if value.starts_with(b"Bearer ") => {
            if token.matches(&value[b"Bearer ".len()..]) {
                next.run(request).await
            } else {
                unauthorized("Wrong API token")
            }
        }
        Some(value)
            if value.starts_with(sigv4::ALGORITHM.as_bytes())
                && lambda::is_route(request.uri().path()) =>
        {
            match signed(&token, request).await {
                Ok(request) => next.run(request).await,
                Err(refused) => refused,
            }
        }
        _ => unauthorized(
            "This API on TCP needs `Authorization: Bearer <token>`, the token in api.token_file",
        ),
    }
}

/// The request, read whole, if its SigV4 signature is the token's.
async fn signed(token: &Token, request: Request) -> Result<Request, Response> {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_SIGNED_BODY).await else {
        let message = format!("A signed body may have at most {MAX_SIGNED_BODY} bytes");
        return Err(ApiError(StatusCode::PAYLOAD_TOO_LARGE, message).into_response());
    };
    let authorization = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let signed = sigv4::Signed {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        body: &body,
    };
    match sigv4::verify(&token.0, authorization.unwrap_or_default(), &signed, SystemTime::now()) {
        Ok(()) => Ok(Request::from_parts(parts, Body::from(body))),
        Err(e) => Err(unauthorized(&e.to_string())),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError(StatusCode::UNAUTHORIZED, message.to_owned()).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    fn token_file(text: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn the_token_file_must_be_private_and_the_token_long() {
        let (_dir, path) = token_file(&format!("  {TOKEN}\n"), 0o600);
        let token = Token::load(&path).unwrap();
        assert!(token.matches(TOKEN.as_bytes()), "whitespace around it is not part of it");
        assert!(!token.matches(b"0123456789abcdef012"));
        assert!(!token.matches(b"0123456789abcdef0124"));
        assert_eq!(format!("{token:?}"), "Token(..)", "never printed");
        let (_dir, open) = token_file(TOKEN, 0o644);
        let error = Token::load(&open).unwrap_err();
        assert!(matches!(error, TokenError::OpenToOthers { mode: 0o644, .. }), "{error}");
        let (_dir, short) = token_file("short\n", 0o600);
        assert!(matches!(Token::load(&short), Err(TokenError::TooShort(_))));
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let (_dir, theirs) = token_file(TOKEN, 0o600);
            std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
            let error = Token::load(&theirs).unwrap_err();
            assert!(matches!(error, TokenError::Owner { owner: 65534, .. }), "{error}");
        } else {
            eprintln!("SKIPPED the part with a file of another user: chown needs root");
        }
        let error = Token::load(Path::new("/nonexistent/token")).unwrap_err();
        assert_eq!(error.to_string(), "Cannot read api.token_file /nonexistent/token");
    }

    #[test]
    fn a_missing_token_file_gets_a_new_random_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/api.token");
        let created = Token::load_or_create(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 64, "{text}");
        assert!(created.matches(text.as_bytes()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Token::load_or_create(&path).unwrap();
        assert!(again.matches(text.as_bytes()), "an existing file is read, not replaced");
        let other = Token::load_or_create(&dir.path().join("other.token")).unwrap();
        assert!(!other.matches(text.as_bytes()), "each new token is random");
    }

    async fn status(app: &Router, method: Method, path: &str, authorization: Option<&str>) -> u16 {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let response = app.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
        if response.status() == StatusCode::UNAUTHORIZED {
            assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
            let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()), "{json}");
            return 401;
        }
        response.status().as_u16()
    }

    #[tokio::test]
    async fn only_metrics_is_open_without_the_token() {
        let (_dir, path) = token_file(TOKEN, 0o600);
        let token = Arc::new(Token::load(&path).unwrap());
        let app = Router::new()
            .route("/metrics", get(|| async { "m" }).post(|| async { "m" }))
            .route("/v1/status", get(|| async { "s" }))
            .route(lambda::ROUTE, axum::routing::post(|| async { "l" }))
            .layer(axum::middleware::from_fn_with_state(token, require_token));
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(status(&app, Method::GET, "/metrics", None).await, 200);
        assert_eq!(status(&app, Method::POST, "/metrics", None).await, 401, "GET only");
        assert_eq!(status(&app, Method::GET, "/v1/status", None).await, 401);
        assert_eq!(status(&app, Method::GET, "/v1/status", Some("Bearer wrong")).await, 401);
        assert_eq!(status(&app, Method::GET, "/v1/status", Some(TOKEN)).await, 401);
        assert_eq!(status(&app, Method::GET, "/v1/status", Some(&bearer)).await, 200);
        assert_eq!(status(&app, Method::GET, "/v1/nothing", None).await, 401, "not even a 404");
        let lambda = "/2015-03-31/functions/f/invocations";
        assert_eq!(status(&app, Method::POST, lambda, Some(&bearer)).await, 200);
        let forged = "AWS4-HMAC-SHA256 Credential=k/20261201/us-east-1/lambda/aws4_request, \
                      SignedHeaders=host;x-amz-date, Signature=00";
        assert_eq!(status(&app, Method::POST, lambda, Some(forged)).await, 401);
        assert_eq!(status(&app, Method::GET, "/v1/status", Some(forged)).await, 401);
    }
}
