//! A listing of a prefix holding 100 000 keys pages through them with the backend's memory
//! bounded by the page, not by the prefix (local-directory store, whose listing is unsorted
//! and must be walked to its end for every page).

use std::time::Instant;

use nexus_channel::wire::{Op, Status};
use nexus_guest::{Client, Request};
use nexus_tests::{nexus_binary, Backend};
use serde_json::{json, Value};

const KEYS: usize = 100_000;
/// Peak resident growth allowed while listing (measured: 2.6 MiB; collecting the whole prefix
/// first, as the backend once did, grew it by 29 MiB).
const MAX_GROWTH_KIB: u64 = 8 << 10;

const SETTINGS: &str = r#"
storage: { url: "file://{dir}/objects" }
default_policy: { grants: [{ bucket: big, access: [list] }] }
"#;

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// One `List` call; the page's JSON.
fn list(client: &Client, params: &Value) -> Value {
    let (buffer, _) = client.lease().unwrap();
    let params = params.to_string();
    client.write(buffer, 0, b"big").unwrap();
    client.write(buffer, 3, params.as_bytes()).unwrap();
    let request = Request {
        op: Op::List as u16,
        buffer,
        bucket_len: 3,
        params_len: params.len() as u32,
        ..Request::default()
    };
    let reply = client.call(&request).unwrap();
    let meta = client.read_in_place(buffer, 0, reply.meta_len as usize, |m| m.to_vec()).unwrap();
    client.release(buffer).unwrap();
    assert_eq!(reply.status, Status::Ok as u32, "{}", String::from_utf8_lossy(&meta));
    serde_json::from_slice(&meta).unwrap()
}

#[test]
fn listing_100k_keys_holds_only_a_page() {
    let backend = Backend::start(&nexus_binary(), SETTINGS, &["big"]).unwrap();
    let dir = backend.dir.join("objects/big/k");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..KEYS {
        std::fs::File::create(dir.join(format!("{i:06}"))).unwrap();
    }
    let client = Client::open(&backend.create_region("lister").unwrap()).unwrap();
    list(&client, &json!({ "Prefix": "k/", "MaxKeys": 1 })); // warm up: threads, allocator
    let pid = backend.pid().unwrap();
    let baseline = status_kib(pid, "VmRSS:");
    // Resets the peak (VmHWM) to the current resident size.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let started = Instant::now();
    let mut token: Option<String> = None;
    let pages = 5;
    for page in 0..pages {
        let mut params = json!({ "Prefix": "k/", "MaxKeys": 1000 });
        if let Some(token) = &token {
            params["ContinuationToken"] = Value::from(token.as_str());
        }
        let answer = list(&client, &params);
        assert_eq!(answer["KeyCount"], 1000);
        assert_eq!(answer["IsTruncated"], true);
        let first = answer["Contents"][0]["Key"].as_str().unwrap();
        assert_eq!(first, format!("k/{:06}", page * 1000), "pages follow on in key order");
        token = answer["NextContinuationToken"].as_str().map(str::to_owned);
    }
    let per_page = started.elapsed() / pages as u32;
    let growth = status_kib(pid, "VmHWM:").saturating_sub(baseline);
    println!(
        "list: {KEYS} keys, local store: peak RSS +{growth} KiB over {baseline} KiB, {:.0} ms a page",
        per_page.as_secs_f64() * 1e3
    );
    assert!(growth < MAX_GROWTH_KIB, "listing grew the backend's peak RSS by {growth} KiB");
}
