//! Invocations through a region, host-native: a Python worker serves the region
//! (`nexus_runtime --serve`) and the control API invokes it, as it will a function VM.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nexus_backend::api::FUNCTION_ERROR;
use nexus_backend::client::exchange;
use nexus_tests::{guest_lib, nexus_binary, Backend};
use serde_json::{json, Value};

const SETTINGS: &str = r#"
storage: { url: "file://{dir}/objects" }
default_policy: { grants: [{ bucket: out, access: [read, write] }] }
"#;

fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn python() -> std::path::PathBuf {
    std::env::var_os("NEXUS_PYTHON").map(Into::into).unwrap_or_else(|| "python3".into())
}

/// A worker process, killed when dropped (also when a test fails, so that it does not
/// outlive the test).
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a worker serving `region` with the echo handler.
fn worker(region: &std::path::Path) -> Worker {
    worker_with_timeout(region, 900.0)
}

/// Starts a worker serving `region` with the echo handler, which may run `timeout_s` seconds.
fn worker_with_timeout(region: &std::path::Path, timeout_s: f64) -> Worker {
    let child = Command::new(python())
        .args(["-m", "nexus_runtime", "--serve", "--timeout", &timeout_s.to_string(), "--handler"])
        .arg(workspace().join("tests/fixtures/echo.py:handler"))
        .env("PYTHONPATH", workspace().join("guest/python"))
        .env("NEXUS_REGION", region)
        .env("NEXUS_GUEST_LIB", guest_lib())
        .stdin(Stdio::null())
        .spawn()
        .expect("start the worker");
    Worker(child)
}

fn invoke(backend: &Backend, id: &str, event: &Value) -> (Value, Option<String>) {
    let path = format!("/v1/regions/{id}/invoke?timeout=30");
    let answer = exchange(&backend.socket, "POST", &path, event.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("invoke {event}: {e}\n{}", backend.log_tail()));
    let error = answer.header(FUNCTION_ERROR).map(str::to_owned);
    (serde_json::from_str(&answer.body).unwrap(), error)
}

/// Waits until the region's guest acknowledged its epoch (the worker imported its handler).
fn wait_ready(backend: &Backend, id: &str) {
    let start = Instant::now();
    loop {
        let path = format!("/v1/regions/{id}/invoke?timeout=5");
        match exchange(&backend.socket, "POST", &path, b"{\"ping\": true}") {
            Ok(_) => return,
            Err(e)
                if start.elapsed() < Duration::from_secs(30) && e.to_string().contains("409") =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("worker never became ready: {e}"),
        }
    }
}

#[test]
fn a_worker_serves_invocations_survives_handler_errors_and_a_restart() {
    let backend = Backend::start(&nexus_binary(), SETTINGS, &["out"]).unwrap();
    let region = backend.create_region("echo").unwrap();
    let id = region.file_stem().unwrap().to_str().unwrap().to_owned();

    // Before a worker is there, an invocation is refused, not lost.
    let path = format!("/v1/regions/{id}/invoke");
    let early = exchange(&backend.socket, "POST", &path, b"{}").unwrap_err().to_string();
    assert!(early.contains("409"), "{early}");

    let mut first = worker(&region);
    wait_ready(&backend, &id);
    let event = json!({ "n": 1, "put": { "bucket": "out", "key": "echo/1.json" } });
    let (result, error) = invoke(&backend, &id, &event);
    assert_eq!(error, None);
    assert_eq!(result["echo"], event);
    assert_eq!(result["function"], "echo");
    let stored = std::fs::read_to_string(backend.dir.join("objects/out/echo/1.json")).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&stored).unwrap(), event);

    // A handler exception is an error result with the traceback; the worker keeps serving.
    let (failure, error) = invoke(&backend, &id, &json!({ "raise": "boom" }));
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(failure["errorType"], "ValueError");
    assert_eq!(failure["errorMessage"], "asked to fail: boom");
    assert!(failure["stackTrace"].to_string().contains("echo.py"), "{failure}");
    let (again, error) = invoke(&backend, &id, &json!({ "n": 2 }));
    assert_eq!((again["echo"]["n"].as_i64(), error), (Some(2), None));

    // A worker that dies mid-invocation: that invocation times out; a new worker serves on.
    let dying =
        exchange(&backend.socket, "POST", &format!("{path}?timeout=3"), b"{\"exit\": true}");
    assert!(dying.unwrap_err().to_string().contains("504"));
    assert!(first.0.wait().unwrap().code() == Some(3));
    let _second = worker(&region);
    let (after, error) = invoke(&backend, &id, &json!({ "n": 3 }));
    assert_eq!((after["echo"]["n"].as_i64(), error), (Some(3), None));
}

#[test]
fn a_prefetched_input_is_read_in_place_until_the_handler_overwrites_it() {
    use nexus_backend::api::{PREFETCH, PREFETCHED};
    let backend = Backend::start(&nexus_binary(), SETTINGS, &["out"]).unwrap();
    std::fs::write(backend.dir.join("objects/out/input.txt"), "staged bytes").unwrap();
    std::fs::create_dir_all(backend.dir.join("objects/secret")).unwrap();
    std::fs::write(backend.dir.join("objects/secret/s.txt"), "not for echo").unwrap();
    let region = backend.create_region("echo").unwrap();
    let id = region.file_stem().unwrap().to_str().unwrap().to_owned();
    let _worker = worker(&region);
    wait_ready(&backend, &id);
    let gets = || backend.metric("nexus_calls_total", &["function=\"echo\"", "op=\"get\""]);
    let gets_before = gets().unwrap();

    // Read from the staging area (no call), overwritten, then read again: a call that sees
    // the write.
    let input = json!({ "bucket": "out", "key": "input.txt" });
    let event = json!({ "get": input, "put": input });
    let hints = json!([
        input,
        { "bucket": "out", "key": "missing" },
        { "bucket": "secret", "key": "s.txt" }
    ])
    .to_string();
    let path = format!("/v1/regions/{id}/invoke?timeout=30");
    let answer = nexus_backend::client::exchange_with(
        &backend.socket,
        "POST",
        &path,
        &[(PREFETCH, &hints)],
        event.to_string().as_bytes(),
    )
    .unwrap_or_else(|e| panic!("invoke: {e}\n{}", backend.log_tail()));
    // A missing object costs only its fetch; one the function may not read is not fetched.
    assert_eq!(answer.header(PREFETCHED), Some("1"), "{}", backend.log_tail());
    let result: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(result["got"], "staged bytes", "{result}");
    assert_eq!(
        serde_json::from_str::<Value>(result["got_after_put"].as_str().unwrap()).unwrap(),
        event
    );
    assert_eq!(gets().unwrap(), gets_before + 1.0, "only the read after the write was a call");

    // Staging lasts one invocation.
    let (result, error) = invoke(&backend, &id, &json!({ "get": input }));
    assert_eq!(error, None);
    assert_eq!(serde_json::from_str::<Value>(result["got"].as_str().unwrap()).unwrap(), event);
    assert_eq!(gets().unwrap(), gets_before + 2.0);
}

#[test]
fn a_handler_past_its_timeout_is_answered_and_the_next_invocation_does_not_wait() {
    let backend = Backend::start(&nexus_binary(), SETTINGS, &["out"]).unwrap();
    let region = backend.create_region("echo").unwrap();
    let id = region.file_stem().unwrap().to_str().unwrap().to_owned();
    let _worker = worker_with_timeout(&region, 0.5);
    wait_ready(&backend, &id);
    // More timeouts in a row than the region has host buffers (4): none may keep one.
    for round in 0..10 {
        let started = Instant::now();
        let (result, error) = invoke(&backend, &id, &json!({ "sleep": 5 }));
        let took = started.elapsed();
        assert_eq!(error.as_deref(), Some("Unhandled"), "round {round}: {result}");
        assert_eq!(result["errorType"], "Sandbox.Timedout", "round {round}: {result}");
        assert_eq!(result["errorMessage"], "Task timed out after 0.50 seconds");
        assert!(took < Duration::from_secs(4), "round {round} took {took:?}");
    }
    let started = Instant::now();
    let (result, error) = invoke(&backend, &id, &json!({ "n": 11 }));
    assert_eq!((result["echo"]["n"].as_i64(), error), (Some(11), None));
    let took = started.elapsed();
    println!("timing: a quick invocation after 10 timeouts took {took:?}");
    assert!(took < Duration::from_secs(4), "it waited behind the timed-out ones: {took:?}");
}
