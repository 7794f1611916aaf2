//! The control API on TCP (`api.listen`) of a real backend: every request but `GET /metrics`
//! needs the token of `api.token_file`, a deploy's code must lie inside `api.code_root`, a
//! deploy cannot widen a policy the config sets, the CLI works over `--tcp`, and a real boto3
//! reaches Lambda's route by signing with the token. Deploys build code disks (mkfs.ext4) but
//! start no VM.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nexus_backend::client::{ClientError, Endpoint};
use nexus_tests::{nexus_binary, Backend};
use serde_json::{json, Value};

/// The policy the config sets for `capped`, which deploys may only narrow.
const CAPPED: &str =
    "{ grants: [{ bucket: b, prefix: in/, access: [read] }], max_object_size: 1MiB }";

struct Tcp {
    backend: Backend,
    addr: String,
    /// `api.code_root`: `{dir}/code`, holding `echo/handler.py`.
    code_root: PathBuf,
}

impl Tcp {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let settings = format!(
            "storage: {{ url: \"file://{{dir}}/objects\" }}\n\
             api: {{ socket: \"{{dir}}/nexus.sock\", listen: \"127.0.0.1:{port}\",\n\
                     token_file: \"{{dir}}/api.token\", code_root: \"{{dir}}/code\" }}\n\
             vm: {{ state_dir: \"{{dir}}/vms\" }}\n\
             functions: {{ capped: {{ policy: {CAPPED} }} }}\n"
        );
        let backend = Backend::start(&nexus_binary(), &settings, &[]).unwrap();
        let code_root = backend.dir.join("code");
        write_handler(&code_root.join("echo"));
        Self { backend, addr: format!("127.0.0.1:{port}"), code_root }
    }

    fn endpoint(&self, token: &str) -> Endpoint {
        Endpoint::Tcp { addr: self.addr.clone(), token: token.to_owned() }
    }

    fn api(&self) -> Endpoint {
        self.endpoint(&self.backend.token)
    }

    /// Deploys `spec` over TCP; the answer's status and JSON.
    fn deploy(&self, spec: &Value) -> Result<Value, (u16, String)> {
        match self.api().request("POST", "/v1/functions", Some(spec)) {
            Ok(body) => Ok(serde_json::from_str(&body).unwrap()),
            Err(ClientError::Status { status, message }) => Err((status, message)),
            Err(e) => panic!("deploy: {e}\n{}", self.backend.log_tail()),
        }
    }
}

fn write_handler(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("handler.py"), "def handler(event, context):\n    return event\n")
        .unwrap();
}

/// A spec of `name` with the code in `code`.
fn spec(name: &str, code: &Path) -> Value {
    json!({ "name": name, "code": code, "handler": "handler.py:handler" })
}

/// One HTTP/1.1 request without any `Authorization`; the status and body.
fn unauthenticated(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[test]
fn tcp_needs_the_token_except_for_metrics_and_the_socket_is_the_owners() {
    let tcp = Tcp::start();
    for (method, path) in [("GET", "/v1/status"), ("GET", "/v1/nothing"), ("POST", "/metrics")] {
        let (status, body) = unauthenticated(&tcp.addr, method, path);
        assert_eq!(status, 401, "{method} {path}: {body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert!(error["error"].as_str().unwrap().contains("Authorization: Bearer"), "{error}");
    }
    let wrong = tcp.endpoint("not-the-token-at-all").request("GET", "/v1/status", None);
    match wrong {
        Err(ClientError::Status { status: 401, message }) => assert_eq!(message, "Wrong API token"),
        other => panic!("a wrong token: {other:?}"),
    }
    let status: Value =
        serde_json::from_str(&tcp.api().request("GET", "/v1/status", None).unwrap()).unwrap();
    assert_eq!(status["regions"], 0);
    let (code, metrics) = unauthenticated(&tcp.addr, "GET", "/metrics");
    assert_eq!(code, 200, "{metrics}");
    assert!(metrics.contains("nexus_regions"), "{metrics}");

    // The socket needs no token: only the backend's user can connect to it.
    tcp.backend.api("GET", "/v1/status", None).unwrap();
    let mode = std::fs::metadata(&tcp.backend.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the API socket is the backend user's alone");
}

#[test]
fn deploys_stay_inside_the_code_root_and_the_configs_policy() {
    let tcp = Tcp::start();
    let echo = tcp.code_root.join("echo");

    let deployed = tcp.deploy(&spec("echo", &echo)).unwrap();
    assert_eq!(deployed["spec"]["code"], echo.canonicalize().unwrap().display().to_string());

    let outside = tempfile::tempdir().unwrap();
    write_handler(outside.path());
    std::os::unix::fs::symlink(outside.path(), tcp.code_root.join("escape")).unwrap();
    for code in
        [outside.path().to_owned(), tcp.code_root.join("escape"), tcp.code_root.join("../vms")]
    {
        let (status, message) = tcp.deploy(&spec("stray", &code)).unwrap_err();
        assert_eq!(status, 403, "{message}");
        assert!(message.contains("is not a directory inside api.code_root"), "{message}");
    }
    // The socket is held to the code root too.
    let error = tcp.backend.api("POST", "/v1/functions", Some(&spec("stray", outside.path())));
    assert!(error.unwrap_err().to_string().contains("403"), "over the socket too");

    let mut wider = spec("capped", &echo);
    wider["policy"] =
        json!({ "grants": [{ "bucket": "b", "prefix": "in/", "access": ["read", "write"] }] });
    let (status, message) = tcp.deploy(&wider).unwrap_err();
    assert_eq!(status, 403, "{message}");
    assert!(
        message.contains("Write access to b/in/ is beyond functions.capped.policy"),
        "{message}"
    );
    let mut larger = spec("capped", &echo);
    larger["policy"] = json!({ "grants": [], "max_object_size": "2MiB" });
    assert_eq!(tcp.deploy(&larger).unwrap_err().0, 403);

    let mut narrower = spec("capped", &echo);
    let narrow = json!({
        "grants": [{ "bucket": "b", "prefix": "in/x/", "access": ["read"] }],
        "max_object_size": 4096,
    });
    narrower["policy"] = narrow.clone();
    let deployed = tcp.deploy(&narrower).unwrap();
    assert_eq!(deployed["spec"]["policy"]["grants"], narrow["grants"]);
    assert_eq!(deployed["spec"]["policy"]["max_object_size"], 4096);
}

fn nexus(tcp: &Tcp, args: &[&str], token_file: Option<&Path>) -> Output {
    let mut command = Command::new(nexus_binary());
    command.args(["--socket", "/nonexistent/nexus.sock", "--tcp", &tcp.addr]);
    command.env_remove("NEXUS_TOKEN_FILE");
    if let Some(file) = token_file {
        command.arg("--token-file").arg(file);
    }
    command.args(args).output().expect("run nexus")
}

#[test]
fn the_cli_works_over_tcp_with_the_token_file() {
    let tcp = Tcp::start();
    let status = nexus(&tcp, &["status"], Some(&tcp.backend.token_file));
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["regions"], 0);
    let path = nexus(&tcp, &["region", "create", "thumbnailer"], Some(&tcp.backend.token_file));
    let path = String::from_utf8(path.stdout).unwrap();
    assert!(path.trim().ends_with("/thumbnailer-1.region"), "{path}");
    let removed = nexus(&tcp, &["region", "rm", path.trim()], Some(&tcp.backend.token_file));
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));

    let without = nexus(&tcp, &["status"], None);
    assert!(!without.status.success());
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert_eq!(stderr.trim(), "nexus: --tcp needs --token-file (or NEXUS_TOKEN_FILE)");
    let wrong = tcp.backend.dir.join("wrong.token");
    std::fs::write(&wrong, "a-token-that-is-not-the-one").unwrap();
    let refused = nexus(&tcp, &["fn", "ls"], Some(&wrong));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.trim(), "nexus: Nexus backend answered 401: Wrong API token");
}

/// Lambda's DryRun of `echo` with the real boto3; prints the HTTP status.
const DRY_RUN: &str = r#"
import boto3, botocore.exceptions
c = boto3.client('lambda', endpoint_url='http://{addr}', region_name='us-east-1',
                 aws_access_key_id='nexus', aws_secret_access_key='{secret}')
try:
    print(c.invoke(FunctionName='echo', InvocationType='DryRun')['StatusCode'])
except botocore.exceptions.ClientError as e:
    print(e.response['ResponseMetadata']['HTTPStatusCode'])
"#;

#[test]
fn a_real_boto3_reaches_the_lambda_route_signing_with_the_token() {
    let Some(python) = std::env::var_os("NEXUS_PYTHON") else {
        eprintln!("SKIPPED: NEXUS_PYTHON is not set (a Python with the real boto3)");
        return;
    };
    let tcp = Tcp::start();
    let echo = tcp.code_root.join("echo");
    tcp.deploy(&json!({ "name": "echo", "code": echo, "handler": "handler.py:handler" })).unwrap();
    // DryRun asks whether the function may be invoked: it runs no VM.
    let dry_run = |secret: &str| {
        let script = DRY_RUN.replace("{addr}", &tcp.addr).replace("{secret}", secret);
        let done =
            Command::new(&python).args(["-c", &script]).env_remove("PYTHONPATH").output().unwrap();
        let stderr = String::from_utf8_lossy(&done.stderr);
        (
            stderr.contains("No module named 'boto3'"),
            String::from_utf8_lossy(&done.stdout).trim().to_owned(),
            stderr.into_owned(),
        )
    };
    let (no_boto3, answer, stderr) = dry_run(&tcp.backend.token);
    if no_boto3 {
        eprintln!("SKIPPED: NEXUS_PYTHON has no real boto3");
        return;
    }
    assert_eq!(answer, "204", "{stderr}\n{}", tcp.backend.log_tail());
    let (_, answer, stderr) = dry_run("a-secret-that-is-not-the-token");
    assert_eq!(answer, "401", "{stderr}");
}
