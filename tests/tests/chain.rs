//! Function-to-function calls through the backend: a chain of three functions in Nexus VMs
//! (no NIC in any guest) calling each other with boto3's `lambda.invoke`, synchronously and
//! as `Event`s, under policies that say who may call whom; and the same chain invoked over
//! HTTP by the real boto3 (Lambda's Invoke route on `api.listen`, what baseline VMs use).
//! QEMU; TCG where /dev/kvm cannot run a guest.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nexus_backend::api::FUNCTION_ERROR;
use nexus_backend::client::exchange;
use nexus_tests::{nexus_binary, Backend};
use serde_json::{json, Value};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn invoke(backend: &Backend, name: &str, event: &Value) -> Value {
    let path = format!("/v1/functions/{name}/invoke");
    let answer = exchange(&backend.socket, "POST", &path, event.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("invoke {name} {event}: {e}\n{}", backend.log_tail()));
    let result: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(answer.header(FUNCTION_ERROR), None, "{result}\n{}", backend.log_tail());
    result
}

#[test]
fn a_chain_of_three_functions_calls_through_the_backend() {
    let images = std::env::var_os("NEXUS_IMAGES").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/nexus/images")
    });
    if !images.join("nexus/rootfs.ext4").is_file() {
        eprintln!(
            "SKIPPED: no nexus guest image in {}: run `cargo xtask guest-image`",
            images.display()
        );
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let settings = format!(
        "storage: {{ url: \"file://{{dir}}/objects\" }}\n\
         api: {{ socket: \"{{dir}}/nexus.sock\", listen: \"127.0.0.1:{port}\",\n\
                 token_file: \"{{dir}}/api.token\", code_root: {} }}\n\
         vm: {{ images: {}, state_dir: \"{{dir}}/vms\", boot_timeout_secs: 240 }}\n",
        workspace().join("guest/python/examples").display(),
        images.display()
    );
    let mut backend = Backend::start(&nexus_binary(), &settings, &["chain"]).unwrap();
    let code = workspace().join("guest/python/examples/chain");
    for (name, may_invoke) in
        [("chain-a", vec!["chain-b"]), ("chain-b", vec!["chain-c"]), ("chain-c", vec![])]
    {
        let spec = json!({
            "name": name, "code": code, "handler": "handler.py:handler", "timeout_secs": 240,
            "policy": { "grants": [{ "bucket": "chain", "access": ["write"] }], "invoke": may_invoke }
        });
        backend.api("POST", "/v1/functions", Some(&spec)).unwrap();
    }

    // Synchronous: a → b → c, each result passed back up (the first run boots three VMs).
    let chain = json!({ "next": ["chain-b", "chain-c"] });
    let result = invoke(&backend, "chain-a", &chain);
    assert_eq!(result, json!({ "path": ["chain-a", "chain-b", "chain-c"] }));
    let started = Instant::now();
    let warm = invoke(&backend, "chain-a", &chain);
    let warm_ms = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(warm, result);
    eprintln!("warm chain of three (a → b → c): {warm_ms:.0} ms end to end");

    // The policy says who may call whom: c may call no one.
    let denied = invoke(&backend, "chain-c", &json!({ "next": ["chain-a"] }));
    assert_eq!(denied, json!({ "path": ["chain-c"], "error": "AccessDeniedException" }));

    // Event: a returns at once (202); b runs on its own and writes its object.
    let event =
        json!({ "next": ["chain-b"], "async": true, "put": "out/from-b.json", "bucket": "chain" });
    let result = invoke(&backend, "chain-a", &event);
    assert_eq!(result, json!({ "path": ["chain-a"], "status": 202 }));
    let object = backend.dir.join("objects/chain/out/from-b.json");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !object.is_file() {
        assert!(Instant::now() < deadline, "the Event never ran:\n{}", backend.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    let written: Value = serde_json::from_slice(&std::fs::read(&object).unwrap()).unwrap();
    assert_eq!(written, json!(["chain-a", "chain-b"]));
    let invokes = backend.metric("nexus_calls_total", &["function=\"chain-a\"", "op=\"invoke\""]);
    assert_eq!(invokes.unwrap(), 3.0, "a's invokes went through the channel");

    // The same chain through Lambda's Invoke route, with the real boto3 (signing with the API
    // token as its secret key).
    match real_boto3_invoke(port, &backend.token, "chain-a", &chain) {
        Some(answer) => assert_eq!(answer, warm, "over HTTP"),
        None => eprintln!("SKIPPED the HTTP part: NEXUS_PYTHON has no real boto3"),
    }
    assert!(backend.stop(), "{}", backend.log_tail());
}

/// Invokes `function` with the real boto3 (the venv's, `NEXUS_PYTHON`) at the backend's
/// Lambda route, with `token` as its secret key; `None` without a real boto3.
fn real_boto3_invoke(port: u16, token: &str, function: &str, event: &Value) -> Option<Value> {
    let python = std::env::var_os("NEXUS_PYTHON")?;
    let script = format!(
        "import boto3, sys\n\
         c = boto3.client('lambda', endpoint_url='http://127.0.0.1:{port}', region_name='us-east-1',\n\
             aws_access_key_id='nexus', aws_secret_access_key='{token}')\n\
         r = c.invoke(FunctionName='{function}', Payload=sys.argv[1])\n\
         assert r['StatusCode'] == 200 and 'FunctionError' not in r, r\n\
         print(r['Payload'].read().decode())\n"
    );
    let done = std::process::Command::new(python)
        .args(["-c", &script, &event.to_string()])
        .env_remove("PYTHONPATH")
        .output()
        .expect("run python");
    let stderr = String::from_utf8_lossy(&done.stderr);
    if stderr.contains("No module named 'boto3'") {
        return None;
    }
    assert!(done.status.success(), "{stderr}");
    Some(serde_json::from_slice(&done.stdout).unwrap())
}
