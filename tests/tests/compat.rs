//! Compatibility: one unmodified handler written for real boto3 (guest/python/examples/compat)
//! runs once with the real boto3 against Garage and once with the Nexus shim against a backend
//! whose storage is that same Garage. Both runs must return the same record (the bucket name
//! aside) and leave the same objects behind: keys, bytes, ETags, content types and metadata.
//!
//! The shim run gets no AWS configuration at all: the backend holds the only credentials.

use std::collections::{BTreeMap, BTreeSet};
use std::env;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nexus_tests::{guest_lib, nexus_binary, Backend, Garage};
use object_store::aws::AmazonS3;
use object_store::path::Path as StorePath;
use object_store::{Attribute, ObjectStore, ObjectStoreExt};
use serde_json::{json, Value};

const HANDLER: &str = "guest/python/examples/compat/handler.py";
const BOTO3_BUCKET: &str = "compat-boto3";
const NEXUS_BUCKET: &str = "compat-nexus";
const PREFIX: &str = "compat/";
/// The function name the shim run's region is created for.
const FUNCTION: &str = "compat";
/// Where `cargo xtask setup` creates the venv with real boto3, relative to `$HOME`.
const SETUP_PYTHON: &str = ".cache/nexus/venv/bin/python";

/// Runs the handler with the real boto3 (not the shim: guest/python is not on the path) and
/// reports which boto3 it imported, so the test can check.
const BOTO3_RUNNER: &str = "\
import json, runpy, sys
import boto3
handler = runpy.run_path(sys.argv[1])['handler']
result = handler(json.load(sys.stdin), None)
print(json.dumps({'boto3': boto3.__file__, 'result': result}))
";

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives inside the workspace")
}

/// `$NEXUS_PYTHON`, else the venv `cargo xtask setup` creates.
fn python() -> PathBuf {
    let path = match env::var_os("NEXUS_PYTHON").filter(|p| !p.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(SETUP_PYTHON),
    };
    assert!(
        path.is_file(),
        "no Python with real boto3 at {}: run `cargo xtask setup` (or set NEXUS_PYTHON)",
        path.display()
    );
    path
}

/// A Python command with an empty environment but for `PATH`, `HOME` and `vars`, in the
/// workspace root, writing no bytecode into the checkout.
fn python_command(vars: &[(&str, &str)]) -> Command {
    let mut command = Command::new(python());
    command.current_dir(workspace_root()).env_clear().env("PYTHONDONTWRITEBYTECODE", "1");
    for name in ["PATH", "HOME"] {
        if let Some(value) = env::var_os(name) {
            command.env(name, value);
        }
    }
    command.envs(vars.iter().copied());
    command
}

/// Runs `command` with `event` on stdin; its stdout as JSON, or a panic with its output.
fn run_json(what: &str, mut command: Command, event: &Value) -> Value {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start Python: {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    // A failed write shows up as the handler's own error below.
    let _ = stdin.write_all(event.to_string().as_bytes());
    drop(stdin);
    let output = child.wait_with_output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{what} failed ({}):\n{stdout}\n{stderr}", output.status);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{what} printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

/// Run 1: the real boto3, configured the usual way (environment variables) for Garage.
fn run_boto3(garage: &Garage, event: &Value) -> Value {
    let handler = workspace_root().join(HANDLER);
    let nowhere = env::temp_dir().join("nexus-compat-no-aws-config");
    let nowhere = nowhere.to_str().expect("temp dir is UTF-8");
    let mut command = python_command(&[
        ("AWS_ENDPOINT_URL", &garage.endpoint),
        ("AWS_ACCESS_KEY_ID", &garage.access_key),
        ("AWS_SECRET_ACCESS_KEY", &garage.secret_key),
        ("AWS_DEFAULT_REGION", &garage.region),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", nowhere),
        ("AWS_SHARED_CREDENTIALS_FILE", nowhere),
    ]);
    command.args(["-c", BOTO3_RUNNER]).arg(&handler);
    let mut answer = run_json("the handler with real boto3", command, event);
    let boto3 = answer["boto3"].as_str().expect("the runner reports boto3's file").to_owned();
    let shim = workspace_root().join("guest/python");
    assert!(
        !Path::new(&boto3).starts_with(&shim) && boto3.contains("site-packages"),
        "run 1 must use the real boto3, but imported {boto3}"
    );
    answer["result"].take()
}

/// Run 2: the shim through `nexus_runtime`, with a region of `backend` and no AWS settings.
fn run_shim(backend: &Backend, event: &Value) -> Value {
    let region = backend.create_region(FUNCTION).unwrap_or_else(|e| panic!("{e}"));
    let shim = workspace_root().join("guest/python");
    let lib = guest_lib();
    let mut command = python_command(&[
        ("PYTHONPATH", shim.to_str().expect("UTF-8 path")),
        ("NEXUS_REGION", region.to_str().expect("UTF-8 path")),
        ("NEXUS_GUEST_LIB", lib.to_str().expect("UTF-8 path")),
    ]);
    let handler = format!("{HANDLER}:handler");
    command.args(["-m", "nexus_runtime", "--handler", &handler, "--event", "-"]);
    let result = run_json("the handler with the Nexus shim", command, event);
    let served = backend
        .metric("nexus_calls_total", &[&format!("function=\"{FUNCTION}\""), "status=\"OK\""])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(served > 0.0, "the shim run made no calls to the backend");
    result
}

/// The backend's settings: S3 storage on `garage`, no cache, full access to the Nexus bucket.
fn settings(garage: &Garage) -> String {
    format!(
        r#"
{storage}cache: {{ max_bytes: 0, max_object_bytes: 0 }}
default_policy:
  grants: [{{ bucket: {NEXUS_BUCKET}, access: [read, write, list, delete] }}]
"#,
        storage = garage.storage_settings(),
    )
}

/// `value` with every string equal to `bucket` replaced by `<bucket>`.
fn without_bucket(value: Value, bucket: &str) -> Value {
    match value {
        Value::String(s) if s == bucket => Value::from("<bucket>"),
        Value::Array(items) => items.into_iter().map(|v| without_bucket(v, bucket)).collect(),
        Value::Object(map) => {
            map.into_iter().map(|(k, v)| (k, without_bucket(v, bucket))).collect()
        }
        other => other,
    }
}

/// Every path where `a` and `b` differ, with both values (`-` where one has nothing).
fn differences(path: &str, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<String>) {
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let keys: BTreeSet<_> = x.keys().chain(y.keys()).collect();
            for k in keys {
                differences(&format!("{path}.{k}"), x.get(k), y.get(k), out);
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            for i in 0..x.len().max(y.len()) {
                differences(&format!("{path}[{i}]"), x.get(i), y.get(i), out);
            }
        }
        (a, b) if a != b => {
            let show = |v: Option<&Value>| v.map_or("-".to_owned(), Value::to_string);
            out.push(format!("{path}: boto3 {}, shim {}", show(a), show(b)));
        }
        _ => {}
    }
}

/// What Garage holds for one object.
#[derive(Debug, PartialEq)]
struct Stored {
    etag: Option<String>,
    content_type: Option<String>,
    metadata: BTreeMap<String, String>,
    size: u64,
    bytes: Vec<u8>,
}

/// Every object of `bucket`, read straight from Garage.
async fn contents(store: &AmazonS3) -> BTreeMap<String, Stored> {
    let mut objects = BTreeMap::new();
    let mut dirs = vec![None::<StorePath>];
    while let Some(dir) = dirs.pop() {
        let listing = store.list_with_delimiter(dir.as_ref()).await.expect("list");
        dirs.extend(listing.common_prefixes.into_iter().map(Some));
        for meta in listing.objects {
            let got = store.get(&meta.location).await.expect("get");
            let mut content_type = None;
            let mut metadata = BTreeMap::new();
            for (attribute, value) in got.attributes.iter() {
                match attribute {
                    Attribute::ContentType => content_type = Some(value.to_string()),
                    Attribute::Metadata(name) => {
                        metadata.insert(name.to_string(), value.to_string());
                    }
                    _ => {}
                }
            }
            let (etag, size) = (got.meta.e_tag.clone(), got.meta.size);
            let bytes = got.bytes().await.expect("body").to_vec();
            let stored = Stored { etag, content_type, metadata, size, bytes };
            objects.insert(meta.location.to_string(), stored);
        }
    }
    objects
}

/// Differences between the two buckets' objects, one line each.
fn compare_buckets(boto3: &BTreeMap<String, Stored>, nexus: &BTreeMap<String, Stored>) -> String {
    let mut report = String::new();
    let keys: BTreeSet<_> = boto3.keys().chain(nexus.keys()).collect();
    for key in keys {
        match (boto3.get(key), nexus.get(key)) {
            (Some(a), Some(b)) if a != b => {
                let _ = writeln!(
                    report,
                    "{key}: boto3 {:?} {:?} {:?} {} bytes, shim {:?} {:?} {:?} {} bytes{}",
                    a.etag,
                    a.content_type,
                    a.metadata,
                    a.size,
                    b.etag,
                    b.content_type,
                    b.metadata,
                    b.size,
                    if a.bytes == b.bytes { "" } else { " (bytes differ)" },
                );
            }
            (Some(_), None) => {
                let _ = writeln!(report, "{key}: only in {BOTO3_BUCKET}");
            }
            (None, Some(_)) => {
                let _ = writeln!(report, "{key}: only in {NEXUS_BUCKET}");
            }
            _ => {}
        }
    }
    report
}

#[test]
fn the_same_handler_gives_the_same_results_with_boto3_and_the_shim() {
    let garage = Garage::start().unwrap_or_else(|e| panic!("{e}"));
    for bucket in [BOTO3_BUCKET, NEXUS_BUCKET] {
        garage.create_bucket(bucket).unwrap_or_else(|e| panic!("{e}"));
    }
    let boto3 = run_boto3(&garage, &json!({ "bucket": BOTO3_BUCKET, "prefix": PREFIX }));
    let backend =
        Backend::start(&nexus_binary(), &settings(&garage), &[]).unwrap_or_else(|e| panic!("{e}"));
    let nexus = run_shim(&backend, &json!({ "bucket": NEXUS_BUCKET, "prefix": PREFIX }));

    let boto3 = without_bucket(boto3, BOTO3_BUCKET);
    let nexus = without_bucket(nexus, NEXUS_BUCKET);
    let mut diff = Vec::new();
    differences("result", Some(&boto3), Some(&nexus), &mut diff);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (boto3_objects, nexus_objects) = runtime.block_on(async {
        let boto3 = contents(&garage.client(BOTO3_BUCKET)).await;
        (boto3, contents(&garage.client(NEXUS_BUCKET)).await)
    });
    let buckets = compare_buckets(&boto3_objects, &nexus_objects);

    if !diff.is_empty() {
        eprintln!("real boto3 returned:\n{boto3:#}\nthe shim returned:\n{nexus:#}");
    }
    assert!(
        diff.is_empty() && buckets.is_empty(),
        "the shim differs from real boto3 in {} results (first: {})\n{}\n\
         and in {} objects:\n{buckets}\nbackend log:\n{}",
        diff.len(),
        diff.first().map_or("none", String::as_str),
        diff.join("\n"),
        buckets.lines().count(),
        backend.log_tail(),
    );
    assert!(!boto3_objects.is_empty(), "the handler left no objects behind");
}
