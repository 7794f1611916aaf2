//! Fuzzes what the control API decodes from a request, with the decoders its handlers use:
//! the JSON bodies of `POST /v1/regions` and `POST /v1/functions` (a `FunctionSpec`, then its
//! validation), the query of `POST /v1/regions/{id}/invoke` and the `x-nexus-prefetch` header.
//! Each must be accepted or refused, never panic; a spec must come back unchanged through
//! the JSON `nexus fn deploy` sends, and a deadline must lie within its bounds.
//!
//! Input: the bytes, given to each of the four decoders in turn.
#![no_main]

use std::time::Duration;

use axum::extract::Query;
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::Json;
use libfuzzer_sys::fuzz_target;
use nexus_backend::api::{prefetch_hints, CreateRegion, InvokeQuery, PREFETCH};
use nexus_backend::functions::FunctionSpec;

fuzz_target!(|bytes: &[u8]| {
    let _ = Json::<CreateRegion>::from_bytes(bytes);
    deploy(bytes);
    invoke_query(bytes);
    prefetch(bytes);
});

fn deploy(body: &[u8]) {
    let Ok(Json(spec)) = Json::<FunctionSpec>::from_bytes(body) else { return };
    let _ = spec.validate();
    let json = serde_json::to_vec(&spec).expect("a spec serializes");
    let again: FunctionSpec = serde_json::from_slice(&json).expect("a serialized spec parses");
    assert_eq!(again, spec, "{}", String::from_utf8_lossy(&json));
}

fn invoke_query(query: &[u8]) {
    let Ok(query) = std::str::from_utf8(query) else { return };
    let Ok(uri) = format!("/v1/regions/r/invoke?{query}").parse::<Uri>() else { return };
    let Ok(Query(query)) = Query::<InvokeQuery>::try_from_uri(&uri) else { return };
    let Ok(deadline) = query.deadline() else { return };
    assert!(deadline >= Duration::from_millis(1) && deadline <= Duration::from_secs(3600));
}

fn prefetch(value: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(value) else { return };
    let mut headers = HeaderMap::new();
    headers.insert(PREFETCH, value);
    let _ = prefetch_hints(&headers);
}
