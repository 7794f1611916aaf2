//! Functions in real VMs (QEMU; TCG where /dev/kvm cannot run a guest), against a real Garage
//! S3 server: the same unmodified boto3 handler in a Nexus VM (no NIC, the backend does the
//! I/O) and in a baseline VM (a NIC and the real boto3). VM boots are few: each costs seconds
//! under TCG.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nexus_backend::api::{COLD_START, FUNCTION_ERROR};
use nexus_backend::client::exchange;
use nexus_tests::{nexus_binary, Backend, Garage, Link, LinkProfile};
use object_store::ObjectStoreExt;
use serde_json::{json, Value};

fn images() -> PathBuf {
    let dir = std::env::var_os("NEXUS_IMAGES").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/nexus/images")
    });
    for flavour in ["nexus", "baseline"] {
        assert!(
            dir.join(flavour).join("rootfs.ext4").is_file(),
            "no {flavour} guest image in {}: run `cargo xtask guest-image` (or `cargo xtask test`)",
            dir.display()
        );
    }
    dir
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The backend's settings, with `storage` as the `storage:` section.
fn settings_with(storage: &str, images: &Path) -> String {
    format!(
        "{storage}default_policy: {{ grants: [{{ bucket: vmtest, access: [read, write] }}] }}\n\
         vm: {{ images: {}, state_dir: \"{{dir}}/vms\", boot_timeout_secs: 240 }}\n",
        images.display()
    )
}

fn deploy(backend: &Backend, spec: Value) {
    backend
        .api("POST", "/v1/functions", Some(&spec))
        .unwrap_or_else(|e| panic!("deploy {spec}: {e}"));
}

/// Invokes `name`; returns the result, the handler-error header and the cold-start header.
fn invoke(backend: &Backend, name: &str, event: &Value) -> (Value, Option<String>, Option<String>) {
    let answer = exchange(
        &backend.socket,
        "POST",
        &format!("/v1/functions/{name}/invoke"),
        event.to_string().as_bytes(),
    )
    .unwrap_or_else(|e| {
        panic!("invoke {name} {event}: {e}\n--- backend log ---\n{}", backend.log_tail())
    });
    let header = |h| answer.header(h).map(str::to_owned);
    (serde_json::from_str(&answer.body).unwrap(), header(FUNCTION_ERROR), header(COLD_START))
}

/// Puts an input object straight into Garage (the test's own client, not the backend).
fn seed(garage: &Garage, key: &str, body: &[u8]) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(garage.client("vmtest").put(&key.into(), body.to_vec().into())).unwrap();
}

fn read(garage: &Garage, key: &str) -> Vec<u8> {
    let store = garage.client("vmtest");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(async { store.get(&key.into()).await.unwrap().bytes().await.unwrap().to_vec() })
}

/// QEMU processes whose command line names `dir` (a backend's VMs live under its own dir; other
/// tests' VMs run at the same time).
fn qemu_processes(dir: &Path) -> usize {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .map(|cmd| String::from_utf8_lossy(&cmd).into_owned())
        .filter(|cmd| cmd.starts_with("qemu-system") && cmd.contains(&dir))
        .count()
}

/// Garage with `input` at `vmtest/in/data.txt`, and a backend on it with the compress example
/// deployed (Nexus flavour) as `compress`; also returns the example's code directory.
fn with_compress(input: &[u8]) -> (Garage, Backend, PathBuf) {
    let garage = Garage::start().unwrap();
    garage.create_bucket("vmtest").unwrap();
    seed(&garage, "in/data.txt", input);
    let backend = compress_backend(&garage.storage_settings());
    (garage, backend, workspace().join("guest/python/examples/compress"))
}

/// A backend with the compress example deployed, reaching storage as `storage` says.
fn compress_backend(storage: &str) -> Backend {
    let backend = Backend::start(&nexus_binary(), &settings_with(storage, &images()), &[]).unwrap();
    let compress = workspace().join("guest/python/examples/compress");
    deploy(
        &backend,
        json!({ "name": "compress", "code": compress, "handler": "handler.py:handler" }),
    );
    backend
}

#[test]
fn functions_run_in_nexus_and_baseline_vms() {
    let input: Vec<u8> = (0..200_000u32)
        .flat_map(|i| format!("line {} of the input\n", i % 977).into_bytes())
        .take(300_000)
        .collect();
    // Nexus flavour: no NIC; the unmodified boto3 handler's calls go through the region.
    let (garage, mut backend, compress) = with_compress(&input);
    let event = json!({ "bucket": "vmtest", "key": "in/data.txt", "output_key": "out/nexus.gz" });
    let (result, error, cold) = invoke(&backend, "compress", &event);
    assert_eq!(error, None, "{result}");
    assert!(cold.is_some(), "the first invocation boots the VM");
    assert_eq!(result["input_bytes"], input.len());
    // Outputs are acknowledged once durable on the host; the upload follows (write-back).
    backend.wait_uploaded(Duration::from_secs(60)).unwrap();
    let output = read(&garage, "out/nexus.gz");
    assert_eq!(result["output_bytes"], output.len());
    let mut inflated = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&output[..]), &mut inflated)
        .unwrap();
    assert!(inflated == input, "the output in the store is the input, compressed");

    // The VM stays warm: the next invocation boots nothing.
    let event = json!({ "bucket": "vmtest", "key": "in/data.txt", "output_key": "out/nexus-2.gz" });
    let (_, error, cold) = invoke(&backend, "compress", &event);
    assert_eq!((error, cold), (None, None));

    // A handler exception is an error result with the traceback; the VM keeps serving.
    let (failure, error, _) = invoke(
        &backend,
        "compress",
        &json!({ "bucket": "vmtest", "key": "in/missing" , "output_key": "x"}),
    );
    assert_eq!(error.as_deref(), Some("Unhandled"), "{failure}");
    assert_eq!(failure["errorType"], "NoSuchKey", "{failure}");
    assert!(failure["stackTrace"].to_string().contains("handler.py"), "{failure}");
    let (again, error, cold) = invoke(
        &backend,
        "compress",
        &json!({ "bucket": "vmtest", "key": "in/data.txt", "output_key": "out/3.gz" }),
    );
    assert_eq!((error, cold), (None, None), "{again}");

    // Baseline flavour: a NIC and the real boto3, which holds the credentials.
    let guest_endpoint = garage.endpoint.replace("127.0.0.1", "10.0.2.2");
    deploy(
        &backend,
        json!({
            "name": "compress-baseline", "code": compress, "handler": "handler.py:handler", "flavour": "baseline",
            "environment": {
                "AWS_ENDPOINT_URL": guest_endpoint, "AWS_ACCESS_KEY_ID": garage.access_key,
                "AWS_SECRET_ACCESS_KEY": garage.secret_key, "AWS_DEFAULT_REGION": garage.region,
                "AWS_EC2_METADATA_DISABLED": "true"
            }
        }),
    );
    let event =
        json!({ "bucket": "vmtest", "key": "in/data.txt", "output_key": "out/baseline.gz" });
    let (result, error, _) = invoke(&backend, "compress-baseline", &event);
    assert_eq!(error, None, "{result}");
    assert_eq!(read(&garage, "out/baseline.gz"), output, "both flavours write the same object");
    let calls = backend.metric("nexus_calls_total", &["function=\"compress-baseline\""]).unwrap();
    assert_eq!(calls, 0.0, "the baseline VM's I/O does not go through the backend");

    // Listing shows warm VMs; removing a function stops its VM.
    let listed = backend.api("GET", "/v1/functions", None).unwrap();
    assert!(listed.as_array().unwrap().iter().all(|f| f["vms"][0]["pid"].is_u64()), "{listed}");
    backend.api("DELETE", "/v1/functions/compress", None).unwrap();
    assert!(qemu_processes(&backend.dir) > 0, "the baseline VM runs");
    assert!(backend.stop(), "the backend stops cleanly:\n{}", backend.log_tail());
    assert_eq!(qemu_processes(&backend.dir), 0, "no VM outlives the backend");
}

#[test]
fn a_guest_that_cannot_boot_gives_a_clear_error() {
    let images = tempfile::tempdir().unwrap();
    let nexus = images.path().join("nexus");
    std::fs::create_dir(&nexus).unwrap();
    for file in ["vmlinuz", "initrd.img", "rootfs.ext4"] {
        std::fs::write(nexus.join(file), b"this is not a kernel\n").unwrap();
    }
    let settings = format!(
        "storage: {{ url: \"file://{{dir}}/objects\" }}\nvm: {{ images: {}, state_dir: \"{{dir}}/vms\", boot_timeout_secs: 60 }}\n",
        images.path().display()
    );
    let backend = Backend::start(&nexus_binary(), &settings, &[]).unwrap();
    let code = workspace().join("tests/fixtures");
    deploy(&backend, json!({ "name": "broken", "code": code, "handler": "echo.py:handler" }));
    let error = exchange(&backend.socket, "POST", "/v1/functions/broken/invoke", b"{}")
        .unwrap_err()
        .to_string();
    assert!(error.contains("502"), "{error}");
    assert!(error.contains("did not start"), "{error}");
    let listed = backend.api("GET", "/v1/functions", None).unwrap();
    assert_eq!(listed[0]["vms"], json!([]), "a failed boot leaves no VM: {listed}");
}

#[test]
fn a_cold_start_restores_the_snapshot_with_its_input_prefetched() {
    use nexus_backend::api::{COLD_START_FROM, PREFETCH, PREFETCHED};
    let input: Vec<u8> =
        (0..40_000u32).flat_map(|i| format!("record {i}\n").into_bytes()).collect();
    let garage = Garage::start().unwrap();
    garage.create_bucket("vmtest").unwrap();
    seed(&garage, "in/data.txt", &input);
    // Storage behind a link the test can stall, to catch a prefetch still in flight.
    let server = garage.endpoint.trim_start_matches("http://").parse().unwrap();
    let link = Link::start(server, LinkProfile::DIRECT, 1).unwrap();
    let mut backend =
        compress_backend(&garage.storage_settings_at(&format!("http://{}", link.addr)));

    // Warm the function, snapshot it, and stop its VM: the next invocation is cold.
    let event_for =
        |key: &str, out: &str| json!({ "bucket": "vmtest", "key": key, "output_key": out });
    let event = |out: &str| event_for("in/data.txt", out);
    let (_, error, cold) = invoke(&backend, "compress", &event("out/boot.gz"));
    assert_eq!((error, cold.is_some()), (None, true));
    let snapshot = backend.api("POST", "/v1/functions/compress/snapshot", None).unwrap();
    assert!(Path::new(snapshot["snapshot"].as_str().unwrap()).join("snapshot.json").is_file());
    backend.api("POST", "/v1/functions/compress/stop", None).unwrap();

    // Cold start from the snapshot, its input fetched while the VM restores.
    let hints = json!([{ "bucket": "vmtest", "key": "in/data.txt" }]).to_string();
    let invoke_hinted_with = |key: &str, out: &str, hints: &str| {
        let path = "/v1/functions/compress/invoke";
        let body = event_for(key, out).to_string();
        nexus_backend::client::exchange_with(
            &backend.socket,
            "POST",
            path,
            &[(PREFETCH, hints)],
            body.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("invoke: {e}\n{}", backend.log_tail()))
    };
    let invoke_hinted = |out: &str, hints: &str| invoke_hinted_with("in/data.txt", out, hints);
    // The staged input is read in place from the region: the guest makes no Get call.
    let gets = || backend.metric("nexus_calls_total", &["function=\"compress\"", "op=\"get\""]);
    let gets_before = gets().unwrap();
    let answer = invoke_hinted("out/restored.gz", &hints);
    assert_eq!(answer.header(COLD_START_FROM), Some("restore"), "{}", answer.body);
    assert_eq!(answer.header(PREFETCHED), Some("1"));
    let result: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(result["input_bytes"], input.len(), "{result}");
    assert_eq!(gets().unwrap(), gets_before, "the staged input was fetched with a call");
    backend.wait_uploaded(Duration::from_secs(60)).unwrap();
    assert_eq!(read(&garage, "out/restored.gz"), read(&garage, "out/boot.gz"));

    // The restored runtime resynced to the new epoch: the agent never had to restart it.
    let listed = backend.api("GET", "/v1/functions", None).unwrap();
    let console =
        std::fs::read_to_string(listed[0]["vms"][0]["serial_log"].as_str().unwrap()).unwrap();
    assert!(!console.contains("runtime exited"), "the runtime died after the restore:\n{console}");

    // A wrong hint costs only its fetch.
    backend.api("POST", "/v1/functions/compress/stop", None).unwrap();
    let wrong = json!([{ "bucket": "vmtest", "key": "in/no-such-object" }]).to_string();
    let answer = invoke_hinted("out/wrong-hint.gz", &wrong);
    assert_eq!(
        (answer.header(COLD_START_FROM), answer.header(PREFETCHED)),
        (Some("restore"), Some("0"))
    );
    assert_eq!(serde_json::from_str::<Value>(&answer.body).unwrap()["input_bytes"], input.len());
    assert_eq!(gets().unwrap(), gets_before + 1.0, "without a right hint the input is a call");

    // An input still arriving when the VM takes the invocation is streamed to the handler's
    // Get as it arrives, not fetched again: storage stalls until the Get waits for it. (A
    // copy of the input under a key no Get has read yet: the backend's cache has the other.)
    seed(&garage, "in/copy.txt", &input);
    let hints = json!([{ "bucket": "vmtest", "key": "in/copy.txt" }]).to_string();
    backend.api("POST", "/v1/functions/compress/stop", None).unwrap();
    let streamed =
        || backend.metric("nexus_prefetch_streamed_total", &["function=\"compress\""]).ok();
    link.hold();
    let answer = std::thread::scope(|s| {
        let invoking = s.spawn(|| invoke_hinted_with("in/copy.txt", "out/streamed.gz", &hints));
        let waiting = wait_until(Duration::from_secs(120), || {
            backend.metric("nexus_inflight_calls", &[]).ok() == Some(1.0)
        });
        link.release();
        assert!(waiting, "the handler's Get never waited:\n{}", backend.log_tail());
        invoking.join().unwrap()
    });
    assert_eq!(
        (answer.header(COLD_START_FROM), answer.header(PREFETCHED)),
        (Some("restore"), Some("1"))
    );
    let result: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(result["input_bytes"], input.len(), "{result}");
    assert_eq!(gets().unwrap(), gets_before + 2.0, "the input still arriving is one Get call");
    assert_eq!(streamed(), Some(1.0), "that Get streamed the prefetch");
    backend.wait_uploaded(Duration::from_secs(60)).unwrap();
    assert_eq!(read(&garage, "out/streamed.gz"), read(&garage, "out/boot.gz"));

    // Staging lasts one invocation: the next, warm, reads its input with a call.
    let (_, error, cold) = invoke(&backend, "compress", &event("out/warm.gz"));
    assert_eq!((error, cold), (None, None));
    assert_eq!(gets().unwrap(), gets_before + 3.0);
    assert_eq!(streamed(), Some(1.0), "a warm Get is not a prefetch's");
    assert!(qemu_processes(&backend.dir) > 0, "the restored VM runs");
    assert!(backend.stop(), "{}", backend.log_tail());
    assert_eq!(qemu_processes(&backend.dir), 0, "no VM outlives the backend");
}

/// Polls `condition` until it holds (true) or `timeout` passes (false).
fn wait_until(timeout: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while !condition() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// The function's VMs as `nexus fn ls` lists them.
fn vms(backend: &Backend, name: &str) -> Vec<Value> {
    let listed = backend.api("GET", "/v1/functions", None).unwrap();
    let function = listed.as_array().unwrap().iter().find(|f| f["spec"]["name"] == name);
    function.unwrap()["vms"].as_array().unwrap().clone()
}

/// Waits up to `timeout` for `condition` on the function's VMs.
fn wait_for_vms(
    backend: &Backend,
    name: &str,
    timeout: Duration,
    condition: impl Fn(&[Value]) -> bool,
) {
    let deadline = std::time::Instant::now() + timeout;
    while !condition(&vms(backend, name)) {
        assert!(std::time::Instant::now() < deadline, "VMs now: {:?}", vms(backend, name));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Invokes `name` with `event` on another thread; the raw answer or error text.
fn invoke_in_background(
    backend: &Backend,
    name: &str,
    event: Value,
) -> std::thread::JoinHandle<(Result<String, String>, Duration)> {
    let (socket, path) = (backend.socket.clone(), format!("/v1/functions/{name}/invoke"));
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let answer = exchange(&socket, "POST", &path, event.to_string().as_bytes());
        (answer.map(|a| a.body).map_err(|e| e.to_string()), started.elapsed())
    })
}

#[test]
fn a_function_scales_over_its_vms_recycles_a_stuck_one_and_stops_idle_ones() {
    // A generous grace and keep-alive: under TCG on a busy machine a runtime that restarts
    // after a timeout takes seconds to import again, and the invocation after it waits for that
    // within its own deadline; and a VM must not go idle-stale while the test watches another.
    let settings = format!(
        "storage: {{ url: \"file://{{dir}}/objects\" }}\n\
         vm: {{ images: {}, state_dir: \"{{dir}}/vms\", boot_timeout_secs: 240, max_vms: 2, \
         timeout_grace_secs: 30, keep_alive_secs: 90 }}\n",
        images().display()
    );
    let backend = Backend::start(&nexus_binary(), &settings, &[]).unwrap();
    let code = workspace().join("tests/fixtures");
    let spec =
        json!({ "name": "echo", "code": code, "handler": "echo.py:handler", "timeout_secs": 3 });
    deploy(&backend, spec);
    let (_, error, cold) = invoke(&backend, "echo", &json!({ "n": 1 }));
    assert!(error.is_none() && cold.is_some(), "the first invocation starts a VM");
    let first_pid = vms(&backend, "echo")[0]["pid"].clone();

    // A handler past its timeout is stopped by the guest runtime; the VM serves on.
    let (result, error, cold) = invoke(&backend, "echo", &json!({ "sleep": 60 }));
    assert_eq!((error.as_deref(), cold), (Some("Unhandled"), None), "{result}");
    assert_eq!(result["errorType"], "Sandbox.Timedout", "{result}");
    let (result, error, cold) = invoke(&backend, "echo", &json!({ "n": 2 }));
    assert_eq!((result["echo"]["n"].as_i64(), error, cold), (Some(2), None, None));
    assert_eq!(vms(&backend, "echo")[0]["pid"], first_pid, "the same VM served");

    // A guest that never answers (the runtime's timer blocked): while its VM is busy a second
    // VM serves, and after the timeout and grace the stuck VM is stopped.
    let stuck =
        invoke_in_background(&backend, "echo", json!({ "sleep": 600, "block_alarm": true }));
    wait_for_vms(&backend, "echo", Duration::from_secs(10), |vms| {
        vms.iter().any(|v| v["busy"] == true)
    });
    let busy = backend.metric("nexus_function_vms", &["function=\"echo\"", "state=\"busy\""]);
    assert_eq!(busy.unwrap(), 1.0);
    let (result, error, cold) = invoke(&backend, "echo", &json!({ "n": 3 }));
    assert_eq!(result["echo"]["n"].as_i64(), Some(3), "{result}");
    assert!(error.is_none() && cold.is_some(), "a second VM started beside the busy one");
    let (answer, took) = stuck.join().unwrap();
    let error = answer.unwrap_err();
    assert!(error.contains("504"), "{error}");
    assert!(took < Duration::from_secs(120), "the stuck invocation ended after {took:?}");
    let left = vms(&backend, "echo");
    assert_eq!(left.len(), 1, "the stuck VM was recycled: {left:?}");
    assert_ne!(left[0]["pid"], first_pid);
    assert_eq!(qemu_processes(&backend.dir), 1);

    // Stopping the function does not wait for the invocation running in it.
    let running =
        invoke_in_background(&backend, "echo", json!({ "sleep": 600, "block_alarm": true }));
    wait_for_vms(&backend, "echo", Duration::from_secs(10), |vms| {
        vms.iter().any(|v| v["busy"] == true)
    });
    let started = std::time::Instant::now();
    backend.api("POST", "/v1/functions/echo/stop", None).unwrap();
    let stopped_in = started.elapsed();
    println!("timing: fn stop during an invocation took {stopped_in:?}");
    assert!(stopped_in < Duration::from_secs(10), "fn stop waited {stopped_in:?}");
    assert!(running.join().unwrap().0.is_err(), "the interrupted invocation failed");
    assert_eq!(vms(&backend, "echo"), Vec::<Value>::new());
    assert_eq!(qemu_processes(&backend.dir), 0);

    // An idle VM is stopped after its keep-alive.
    let (_, error, cold) = invoke(&backend, "echo", &json!({ "n": 4 }));
    assert!(error.is_none() && cold.is_some());
    wait_for_vms(&backend, "echo", Duration::from_secs(180), |vms| vms.is_empty());
    assert_eq!(qemu_processes(&backend.dir), 0);
}
