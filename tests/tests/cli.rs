//! The `nexus` CLI against a real backend: what `region create` prints is what `region rm`
//! takes, and every error the API answers carries a message.

use std::process::{Command, Output};

use nexus_backend::client::exchange;
use nexus_tests::{nexus_binary, Backend};

const SETTINGS: &str = "storage: { url: \"file://{dir}/objects\" }\n";

fn nexus(backend: &Backend, args: &[&str]) -> Output {
    Command::new(nexus_binary())
        .arg("--socket")
        .arg(&backend.socket)
        .args(args)
        .output()
        .expect("run nexus")
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn region_rm_takes_what_region_create_printed_or_the_id() {
    let backend = Backend::start(&nexus_binary(), SETTINGS, &[]).unwrap();
    let path = stdout(&nexus(&backend, &["region", "create", "thumbnailer"]));
    assert!(path.ends_with(".region") && std::path::Path::new(&path).exists(), "{path}");
    stdout(&nexus(&backend, &["region", "rm", &path]));
    assert!(!std::path::Path::new(&path).exists(), "the region file is gone");

    let path = stdout(&nexus(&backend, &["region", "create", "thumbnailer"]));
    let listed = stdout(&nexus(&backend, &["region", "ls"]));
    let regions: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let id = regions[0]["id"].as_str().unwrap().to_owned();
    stdout(&nexus(&backend, &["region", "rm", &id]));
    assert!(!std::path::Path::new(&path).exists());
    assert_eq!(stdout(&nexus(&backend, &["region", "ls"])), "[]");
}

#[test]
fn every_api_error_carries_a_message() {
    let backend = Backend::start(&nexus_binary(), SETTINGS, &[]).unwrap();
    let missing = nexus(&backend, &["region", "rm", "/dev/shm/nexus/gone-7.region"]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.trim(), "nexus: Nexus backend answered 404: No region gone-7");

    for (method, path, status, words) in [
        ("GET", "/v1/nothing/here", "404", "No such API path /v1/nothing/here"),
        ("PUT", "/v1/regions", "405", "/v1/regions does not take PUT"),
        ("DELETE", "/v1/regions/a/b", "404", "No such API path /v1/regions/a/b"),
        ("POST", "/v1/functions", "400", "EOF while parsing"),
    ] {
        let error = exchange(&backend.socket, method, path, b"").unwrap_err().to_string();
        assert!(error.starts_with(&format!("Nexus backend answered {status}: ")), "{error}");
        assert!(error.contains(words), "{method} {path}: {error}");
    }
}
