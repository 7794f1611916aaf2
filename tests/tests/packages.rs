//! Functions as users bring them: a `requirements.txt` installed at deploy (from PyPI, wheels
//! for the guest's Python) and imported in real VMs of both flavours, the whole Lambda context
//! there, and a redeploy of unchanged code that keeps the warm VM. QEMU; TCG where /dev/kvm
//! cannot run a guest.

use std::path::{Path, PathBuf};

use nexus_backend::api::{COLD_START, FUNCTION_ERROR};
use nexus_backend::client::exchange;
use nexus_tests::{nexus_binary, Backend};
use serde_json::{json, Value};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The guest images folder if it holds `flavour`'s image; else `None`, and says why.
fn images(flavour: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("NEXUS_IMAGES").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/nexus/images")
    });
    if dir.join(flavour).join("rootfs.ext4").is_file() {
        return Some(dir);
    }
    eprintln!(
        "SKIPPED: no {flavour} guest image in {}: run `cargo xtask guest-image`",
        dir.display()
    );
    None
}

fn backend(images: &Path) -> Backend {
    let settings = format!(
        "storage: {{ url: \"file://{{dir}}/objects\" }}\n\
         vm: {{ images: {}, state_dir: \"{{dir}}/vms\", boot_timeout_secs: 240 }}\n",
        images.display()
    );
    Backend::start(&nexus_binary(), &settings, &[]).unwrap()
}

fn deploy(backend: &Backend, spec: &Value) {
    backend.api("POST", "/v1/functions", Some(spec)).unwrap_or_else(|e| {
        panic!("deploy {spec}: {e}\n--- backend log ---\n{}", backend.log_tail())
    });
}

/// Invokes `name` with `{}`; returns the result and whether the invocation started a VM.
fn invoke(backend: &Backend, name: &str) -> (Value, bool) {
    let answer = exchange(&backend.socket, "POST", &format!("/v1/functions/{name}/invoke"), b"{}")
        .unwrap_or_else(|e| panic!("invoke {name}: {e}\n{}", backend.log_tail()));
    let result: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(answer.header(FUNCTION_ERROR), None, "{result}");
    (result, answer.header(COLD_START).is_some())
}

#[test]
fn requirements_are_installed_for_the_guest_and_imported_in_both_flavours() {
    let Some(dir) = images("nexus") else { return };
    let mut backend = backend(&dir);
    let code = workspace().join("tests/fixtures/packages");
    let spec = json!({
        "name": "packages", "code": code, "handler": "handler.py:handler",
        "memory_mib": 384, "timeout_secs": 120
    });
    deploy(&backend, &spec);
    let (result, cold) = invoke(&backend, "packages");
    assert!(cold, "the first invocation boots the VM");
    assert_eq!(result["six"], "1.16.0", "{result}");
    assert_eq!(result["sum"], 45.0, "numpy's compiled code ran in the guest: {result}");
    assert!(result["numpy_file"].as_str().unwrap().starts_with("/var/task/.python/"), "{result}");

    // The context, attribute by attribute, in the VM.
    let context = &result["context"];
    assert_eq!(context["function_name"], "packages");
    assert_eq!(context["function_version"], "$LATEST");
    assert_eq!(
        context["invoked_function_arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:packages"
    );
    assert_eq!(context["memory_limit_in_mb"], "384", "the spec's memory_mib, as a string");
    assert_eq!(context["aws_request_id"].as_str().unwrap().len(), 36);
    assert_eq!(context["log_group_name"], "/aws/lambda/packages");
    assert!(context["log_stream_name"].as_str().unwrap().contains("/[$LATEST]"), "{context}");
    assert_eq!(context["identity"], json!([null, null]));
    assert_eq!(context["client_context"], Value::Null);
    let remaining = context["remaining_ms"].as_u64().unwrap();
    assert!(remaining > 0 && remaining <= 120_000, "{context}");

    // Redeploying the same function builds nothing and keeps its VM warm.
    let started = std::time::Instant::now();
    deploy(&backend, &spec);
    let redeploy = started.elapsed();
    let (again, cold) = invoke(&backend, "packages");
    assert!(!cold, "an unchanged deploy must not restart the VM");
    assert_ne!(again["context"]["aws_request_id"], context["aws_request_id"]);
    assert_eq!(again["context"]["log_stream_name"], context["log_stream_name"], "same VM");
    eprintln!("unchanged redeploy took {} ms", redeploy.as_millis());

    // The baseline flavour gets the same packages.
    if images("baseline").is_none() {
        return;
    }
    let baseline = json!({
        "name": "packages-baseline", "code": code, "handler": "handler.py:handler",
        "flavour": "baseline", "memory_mib": 384, "timeout_secs": 120
    });
    deploy(&backend, &baseline);
    let (result, _) = invoke(&backend, "packages-baseline");
    assert_eq!((result["six"].clone(), result["sum"].clone()), (json!("1.16.0"), json!(45.0)));
    assert_eq!(result["context"]["memory_limit_in_mb"], "384");
    assert!(backend.stop(), "{}", backend.log_tail());
}

#[test]
fn a_package_without_a_wheel_for_the_guest_is_named() {
    let code = tempfile::tempdir().unwrap();
    std::fs::write(code.path().join("handler.py"), "def handler(e, c):\n    return 1\n").unwrap();
    // This version was published as a source distribution only.
    std::fs::write(code.path().join("requirements.txt"), "antlr4-python3-runtime==4.9.3\n")
        .unwrap();
    let backend = Backend::start(
        &nexus_binary(),
        "storage: { url: \"file://{dir}/objects\" }\nvm: { state_dir: \"{dir}/vms\" }\n",
        &[],
    )
    .unwrap();
    let spec = json!({ "name": "sdist", "code": code.path(), "handler": "handler.py:handler" });
    let error = backend.api("POST", "/v1/functions", Some(&spec)).unwrap_err().to_string();
    assert!(error.contains("answered 400"), "{error}");
    assert!(
        error.contains("no binary wheel of antlr4-python3-runtime==4.9.3 for the guest's Python"),
        "{error}"
    );
}
