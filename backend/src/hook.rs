//! libvirt's hook script for operators' domains (`nexus libvirt install-hook`, `remove-hook`,
//! and `nexus libvirt hook`, which the script runs).
//!
//! ```text
//!  libvirtd ─► /etc/libvirt/hooks/qemu DOMAIN OP SUBOP EXTRA   (domain XML on stdin)
//!              └ exec nexus --socket SOCKET libvirt hook "$@"
//!  not a Nexus domain, or one the backend defined ─► exit 0, nothing asked
//!  prepare  ─► POST /v1/libvirt/domains (the XML)     refused: the message on stderr, exit 1,
//!                                                     and libvirt fails the start with it
//!  restore  ─► refused: an operator's region does not survive a save (start it afresh)
//!  release  ─► DELETE /v1/libvirt/domains/DOMAIN      (never fails: the domain is gone)
//! ```
//!
//! libvirtd looks for hook scripts when it starts: restart it after installing or removing.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nexus_plugin::libvirt::{DomainXml, Kind};

use crate::client::{exchange, ClientError};
use crate::storage::error_chain;

/// Where libvirtd runs the hook script of its QEMU driver.
pub const HOOK: &str = "/etc/libvirt/hooks/qemu";
/// The line that marks a hook script as Nexus's.
const MARK: &str =
    "# Installed by `nexus libvirt install-hook`; `nexus libvirt remove-hook` removes it.";

/// Why the hook script cannot be installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// Another hook script is in the way.
    #[error(
        "{0} exists and is not Nexus's: add `{1}` to it for the Nexus domains, or move it away"
    )]
    Foreign(String, String),
    /// A file operation failed.
    #[error("Cannot write {0}")]
    Io(String, #[source] std::io::Error),
}

/// The script's text: runs `nexus` with the backend's `socket`.
fn script(nexus: &Path, socket: &Path) -> String {
    let quote = |path: &Path| format!("'{}'", path.to_string_lossy().replace('\'', r"'\''"));
    format!(
        "#!/bin/sh\n{MARK}\n# libvirt runs it for each QEMU domain; see README, \"Managing with virsh\".\n\
         exec {} --socket {} libvirt hook \"$@\"\n",
        quote(nexus),
        quote(socket)
    )
}

/// Installs the hook script at `path`, running `nexus` against the backend at `socket`;
/// replaces an earlier Nexus script, never another one.
pub fn install(path: &Path, nexus: &Path, socket: &Path) -> Result<(), HookError> {
    let io = |e| HookError::Io(path.display().to_string(), e);
    let text = script(nexus, socket);
    if let Ok(existing) = std::fs::read_to_string(path) {
        if !existing.contains(MARK) {
            let line = text.lines().last().unwrap_or_default().to_owned();
            return Err(HookError::Foreign(path.display().to_string(), line));
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let partial = path.with_extension("nexus-partial");
    let mut file = std::fs::File::create(&partial).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o755)).map_err(io)?;
    std::fs::rename(&partial, path).map_err(io)
}

/// Removes the Nexus hook script at `path`; whether there was one. Another script stays.
pub fn remove(path: &Path) -> Result<bool, HookError> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.contains(MARK) => {
            std::fs::remove_file(path).map_err(|e| HookError::Io(path.display().to_string(), e))?;
            Ok(true)
        }
        Ok(_) => Err(HookError::Foreign(path.display().to_string(), String::new())),
        Err(_) => Ok(false),
    }
}

/// What the hook does for `operation` of the domain described by `xml`; `Err` is the
/// message libvirt shows when it fails the operation.
pub fn run(socket: &Path, operation: &str, xml: &str) -> Result<(), String> {
    // libvirt's XML always parses; anything else is no Nexus domain to judge.
    let Ok(domain) = DomainXml::parse(xml) else { return Ok(()) };
    if domain.kind() != Kind::Operator {
        return Ok(());
    }
    let name = &domain.name;
    match operation {
        "prepare" => match exchange(socket, "POST", "/v1/libvirt/domains", xml.as_bytes()) {
            Ok(_) => Ok(()),
            Err(ClientError::Status { message, .. }) => Err(message),
            Err(e) => Err(format!("Domain {name} needs its Nexus region: {}", error_chain(&e))),
        },
        "restore" => Err(format!(
            "Domain {name} is an operator's Nexus domain, whose region does not survive a save: \
             start it afresh (virsh start)"
        )),
        "release" => {
            let path = format!("/v1/libvirt/domains/{name}");
            // The domain is gone whatever the backend says: never fail a release.
            match exchange(socket, "DELETE", &path, b"") {
                Ok(_) | Err(ClientError::Status { status: 404, .. }) => {}
                Err(e) => {
                    eprintln!("nexus: cannot release the region of {name}: {}", error_chain(&e))
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_replaces_its_own_and_leaves_anothers_script_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hooks/qemu");
        install(&path, Path::new("/opt/it's/nexus"), Path::new("/run/nexus/nexus.sock")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with(
                "exec '/opt/it'\\''s/nexus' --socket '/run/nexus/nexus.sock' libvirt hook \"$@\"\n"
            ),
            "{text}"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o755);
        install(&path, Path::new("/usr/bin/nexus"), Path::new("/s")).unwrap();
        assert!(remove(&path).unwrap());
        assert!(!remove(&path).unwrap(), "nothing to remove");

        std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        let error = install(&path, Path::new("/usr/bin/nexus"), Path::new("/s")).unwrap_err();
        assert!(
            error.to_string().contains("is not Nexus's: add `exec '/usr/bin/nexus'"),
            "{error}"
        );
        assert!(remove(&path).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "#!/bin/sh\nexit 0\n");
    }

    #[test]
    fn other_domains_pass_without_asking_the_backend() {
        let nowhere = Path::new("/nonexistent/nexus.sock");
        let plain = "<domain type='qemu'><name>web</name><devices/></domain>";
        for operation in ["prepare", "restore", "release"] {
            assert_eq!(run(nowhere, operation, plain), Ok(()));
        }
        let operator = "<domain><name>web</name><metadata><vm xmlns='https://nexus.dev/libvirt/1' \
                        function='f'/></metadata></domain>";
        let error = run(nowhere, "prepare", operator).unwrap_err();
        assert!(error.contains("Cannot reach the Nexus backend"), "{error}");
        assert!(run(nowhere, "restore", operator).unwrap_err().contains("start it afresh"));
        assert_eq!(run(nowhere, "release", operator), Ok(()), "a release never fails");
    }
}
