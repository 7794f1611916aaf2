//! The conventional platform end to end: a baseline VM (QEMU; TCG where /dev/kvm cannot run a
//! guest) on a tap in a network namespace of its own, invoked over HTTP, reading its input
//! from a real Garage with the real boto3 through its NIC and the storage link; then a
//! snapshot, a restore into a new QEMU on the same tap, and the namespace gone at the end; and
//! two functions on platforms of their own calling each other through the Lambda endpoint.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_backend::functions::FunctionSpec;
use nexus_plugin::AccelChoice;
use nexus_tests::conventional::{ConventionalError, Platform};
use nexus_tests::{Conventional, Garage, LambdaFront, LinkProfile, NetNs};
use object_store::ObjectStoreExt;
use serde_json::json;

const BUCKET: &str = "convtest";

const HANDLER: &str = r#"
import boto3

s3 = boto3.client("s3")

def handler(event, context):
    body = s3.get_object(Bucket=event["bucket"], Key=event["key"])["Body"].read()
    return {"bytes": len(body), "head": body[:12].decode(), "boto3": boto3.__file__}
"#;

/// The baseline image's files, or why the test cannot run here.
fn baseline_image() -> Result<[PathBuf; 3], String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("network namespaces and taps need root".into());
    }
    if Command::new("qemu-system-x86_64").arg("--version").output().is_err() {
        return Err("qemu-system-x86_64 is not installed".into());
    }
    let images = std::env::var_os("NEXUS_IMAGES").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/nexus/images")
    });
    let dir = images.join("baseline");
    let files = ["vmlinuz", "initrd.img", "rootfs.ext4"].map(|f| dir.join(f));
    match files.iter().find(|f| !f.is_file()) {
        Some(missing) => Err(format!("no {}: run `cargo xtask guest-image`", missing.display())),
        None => Ok(files),
    }
}

/// A Garage with the test's bucket, once the baseline image is known to be there.
fn garage_or_why_not() -> Result<Garage, String> {
    baseline_image()?;
    let garage = Garage::start().unwrap();
    garage.create_bucket(BUCKET).unwrap();
    Ok(garage)
}

/// A conventional platform for `handler` of `code` as `name`, its work under `work`, reaching
/// `garage` through the S3 link model, and the Lambda endpoint `lambda` if given.
fn start_platform(
    name: &str,
    code: &Path,
    handler: &str,
    garage: &Garage,
    work: &Path,
    lambda: Option<SocketAddr>,
) -> Conventional {
    let [kernel, initrd, rootfs] = baseline_image().expect("checked by the test");
    let spec: FunctionSpec = serde_json::from_value(json!({
        "name": name, "code": code, "handler": handler, "flavour": "baseline",
        "environment": {
            "AWS_ACCESS_KEY_ID": garage.access_key, "AWS_SECRET_ACCESS_KEY": garage.secret_key,
            "AWS_DEFAULT_REGION": garage.region, "AWS_EC2_METADATA_DISABLED": "true",
        },
    }))
    .unwrap();
    let platform = Platform {
        kernel,
        initrd,
        rootfs,
        work_dir: work.join(format!("platform-{name}")),
        netns_prefix: "nexus-test-conventional".into(),
        accel: AccelChoice::Auto,
        tcg_cache_mib: Some(64),
        storage: garage.endpoint.trim_start_matches("http://").parse().unwrap(),
        link: LinkProfile::S3,
        link_seed: 1,
        lambda,
        boot_timeout: Duration::from_secs(240),
    };
    Conventional::start(spec, platform).unwrap()
}

#[test]
fn a_baseline_vm_on_a_tap_serves_over_http_and_reads_garage_with_boto3() {
    let garage = match garage_or_why_not() {
        Ok(garage) => garage,
        Err(why) => return eprintln!("skipped: {why}"),
    };
    let input = b"conventional input ".repeat(1000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = garage.client(BUCKET);
    runtime.block_on(store.put(&"in/data".into(), input.clone().into())).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let code = dir.path().join("code");
    std::fs::create_dir_all(&code).unwrap();
    std::fs::write(code.join("handler.py"), HANDLER).unwrap();
    let mut platform =
        start_platform("conv", &code, "handler.py:handler", &garage, dir.path(), None);
    let netns = platform.netns().to_owned();
    assert!(NetNs::exists(&netns));

    let started = Instant::now();
    let pid = platform.add().unwrap();
    eprintln!("booted to ready in {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(platform.pids(), [pid]);
    let event = json!({ "bucket": BUCKET, "key": "in/data" });
    let result = platform.invoke(&event).unwrap();
    assert_eq!(result["bytes"], input.len(), "{result}");
    assert_eq!(result["head"], "conventional", "{result}");
    let boto3 = result["boto3"].as_str().unwrap();
    let real = boto3.contains("/dist-packages/boto3/") && !boto3.starts_with("/opt/nexus");
    assert!(real, "the real boto3, not the Nexus shim: {boto3}");

    // A second VM; invocations from several threads at once share the two.
    let second = platform.add().unwrap();
    let results: Vec<_> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..4).map(|_| s.spawn(|| platform.invoke(&event))).collect();
        calls.into_iter().map(|call| call.join().unwrap().unwrap()).collect()
    });
    assert!(results.iter().all(|r| r["bytes"] == input.len()), "{results:?}");
    assert_eq!(platform.pids(), [pid, second]);

    let missing = platform.invoke(&json!({ "bucket": BUCKET, "key": "in/missing" }));
    match missing {
        Err(ConventionalError::Handler(error)) => assert!(error.contains("NoSuchKey"), "{error}"),
        other => panic!("a missing key should fail the handler: {other:?}"),
    }

    let saved = platform.snapshot(&dir.path().join("snapshot")).unwrap();
    assert_eq!(platform.pids(), [pid], "the snapshotted VM (the last added) is stopped");
    let restored = platform.restore(&saved).unwrap();
    let started = Instant::now();
    let result = platform.invoke(&event).unwrap();
    eprintln!(
        "restored to ready in {:.2} s, first invocation {:.2} s",
        restored.ready_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(result["bytes"], input.len(), "{result}");
    assert_eq!(platform.pids(), [pid, restored.pid]);

    drop(platform);
    assert!(!NetNs::exists(&netns), "the namespace is removed");
    let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&netns));
}

#[test]
fn functions_call_each_other_through_the_platforms_lambda_endpoint() {
    let garage = match garage_or_why_not() {
        Ok(garage) => garage,
        Err(why) => return eprintln!("skipped: {why}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let code = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest/python/examples/chain");
    let front = LambdaFront::start().unwrap();
    for name in ["conv-a", "conv-b"] {
        let handler = "handler.py:handler";
        let mut platform =
            start_platform(name, &code, handler, &garage, dir.path(), Some(front.addr));
        platform.add().unwrap();
        front.serve(name, Arc::new(platform));
    }
    let head = front.platform("conv-a").unwrap();

    // a invokes b with the real boto3, over a's NIC and b's; b writes what it saw.
    let event = json!({ "next": ["conv-b"], "put": "out/chain", "bucket": BUCKET });
    assert_eq!(head.invoke(&event).unwrap(), json!({ "path": ["conv-a", "conv-b"] }));
    assert_eq!(read(&garage, "out/chain"), Some(br#"["conv-a", "conv-b"]"#.to_vec()));

    // An unknown function is Lambda's 404, which boto3 raises as ResourceNotFoundException.
    let unknown = head.invoke(&json!({ "next": ["conv-x"] })).unwrap();
    assert_eq!(unknown, json!({ "path": ["conv-a"], "error": "ResourceNotFoundException" }));

    // An Event is accepted at once (202) and runs b in the background.
    let event = json!({ "next": ["conv-b"], "put": "out/event", "bucket": BUCKET, "async": true });
    assert_eq!(head.invoke(&event).unwrap(), json!({ "path": ["conv-a"], "status": 202 }));
    let deadline = Instant::now() + Duration::from_secs(60);
    while read(&garage, "out/event").is_none() {
        assert!(Instant::now() < deadline, "the Event never ran conv-b");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The object at `key`, if there is one.
fn read(garage: &Garage, key: &str) -> Option<Vec<u8>> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = garage.client(BUCKET);
    runtime
        .block_on(async { Some(store.get(&key.into()).await.ok()?.bytes().await.ok()?.to_vec()) })
}
