//! Debian packages, on the host's terms: the mirror comes from the host's apt sources, packages
//! are resolved with `apt-cache` and fetched with `apt-get download` (which checks them against
//! the signed archive index), then unpacked once per version.
//!
//! The mirror is never written into the repository: it is read at run time from
//! `/etc/apt/sources.list`, `/etc/apt/sources.list.d/*.list` (one-line entries) and
//! `/etc/apt/sources.list.d/*.sources` (deb822 stanzas).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};

use super::output;
use crate::cmd;

/// The Debian release of the guest images.
pub const SUITE: &str = "bookworm";

/// Set once `apt-get update` ran in this process, so it runs at most once.
static UPDATED: AtomicBool = AtomicBool::new(false);

/// A package at the version apt would install now.
#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
}

impl Package {
    /// `name`'s candidate version (`apt-cache show --no-all-versions`).
    pub fn candidate(name: &str) -> Result<Package> {
        let text = apt_cache(&["show", "--no-all-versions", name])?;
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(str::trim))
                .map(str::to_owned)
                .with_context(|| format!("`apt-cache show {name}` gives no {key}"))
        };
        Ok(Package {
            name: name.to_owned(),
            version: field("Version")?,
            arch: field("Architecture")?,
        })
    }

    /// `name_version_arch`, as `apt-get download` names the .deb (an epoch's `:` is `%3a`).
    pub fn file_stem(&self) -> String {
        format!("{}_{}_{}", self.name, self.version.replace(':', "%3a"), self.arch)
    }

    /// Downloads and unpacks the package under `cache/<file stem>/` unless it is there;
    /// returns the unpacked tree (`.../root`).
    pub fn fetch(&self, cache: &Path) -> Result<PathBuf> {
        let dir = cache.join(self.file_stem());
        let root = dir.join("root");
        if root.is_dir() {
            return Ok(root);
        }
        super::remove_tree(&dir)?;
        fs::create_dir_all(&dir)?;
        cmd::run(
            Command::new("apt-get")
                .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
                .arg(format!("{}={}", self.name, self.version))
                .current_dir(&dir),
        )?;
        let deb = dir.join(format!("{}.deb", self.file_stem()));
        let partial = dir.join("root.partial");
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
        fs::rename(&partial, &root)?;
        fs::remove_file(&deb)?;
        Ok(root)
    }
}

/// The packages `name` depends on (`apt-cache depends`), alternatives included.
pub fn depends(name: &str) -> Result<Vec<String>> {
    let text = apt_cache(&["depends", name])?;
    Ok(text
        .lines()
        .filter_map(|l| l.trim().trim_start_matches('|').strip_prefix("Depends:"))
        .map(|p| p.trim().to_owned())
        .collect())
}

/// Runs `apt-cache ARGS`; if apt knows nothing yet (no lists on a fresh machine), runs
/// `apt-get update` once and asks again.
fn apt_cache(args: &[&str]) -> Result<String> {
    let ask = || output(Command::new("apt-cache").args(args)).ok().filter(|o| !o.trim().is_empty());
    if let Some(answer) = ask() {
        return Ok(answer);
    }
    if !UPDATED.swap(true, Ordering::SeqCst) {
        cmd::run(Command::new("apt-get").args(["-q", "update"]))?;
        if let Some(answer) = ask() {
            return Ok(answer);
        }
    }
    bail!("`apt-cache {}` knows nothing; check the host's apt sources", args.join(" "))
}

/// The host's Debian mirror for `bookworm main`, from its apt configuration.
pub fn mirror() -> Result<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
        more.sort();
        files.extend(more);
    }
    let mut sources = Vec::new();
    for file in files {
        let format = match file.extension().and_then(|e| e.to_str()) {
            Some("list") => Format::OneLine,
            Some("sources") => Format::Deb822,
            _ => continue,
        };
        if let Ok(text) = fs::read_to_string(&file) {
            sources.push((format, text));
        }
    }
    mirror_in(&sources).with_context(|| {
        format!("No `deb` source for `{SUITE} main` in /etc/apt/sources.list{{,.d/}}; add one")
    })
}

/// How an apt sources file is written.
#[derive(Debug, Clone, Copy)]
enum Format {
    /// `deb [options] URI suite component...`, one source per line.
    OneLine,
    /// Stanzas of `Types:`, `URIs:`, `Suites:`, `Components:` fields, split by blank lines.
    Deb822,
}

/// The first `deb` URI serving [`SUITE`] with component `main`, without a trailing slash.
fn mirror_in(sources: &[(Format, String)]) -> Option<String> {
    let entries = sources.iter().flat_map(|(format, text)| match format {
        Format::OneLine => one_line_entries(text),
        Format::Deb822 => deb822_entries(text),
    });
    entries
        .filter(|e| {
            e.enabled
                && e.types.iter().any(|t| t == "deb")
                && e.suites.iter().any(|s| s == SUITE)
                && e.components.iter().any(|c| c == "main")
        })
        .flat_map(|e| e.uris)
        .find(|u| ["http://", "https://", "ftp://", "file:/"].iter().any(|p| u.starts_with(p)))
        .map(|u| u.trim_end_matches('/').to_owned())
}

/// One source entry, whichever format it came in.
#[derive(Debug, Default)]
struct Entry {
    enabled: bool,
    types: Vec<String>,
    uris: Vec<String>,
    suites: Vec<String>,
    components: Vec<String>,
}

fn one_line_entries(text: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let Some((kind, rest)) = line.split_once(char::is_whitespace) else { continue };
        // Options are `[key=value ...]` right after the type.
        let rest = match rest.trim_start().strip_prefix('[') {
            Some(options) => options.split_once(']').map_or("", |(_, after)| after),
            None => rest,
        };
        let mut words = rest.split_whitespace().map(str::to_owned);
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else { continue };
        entries.push(Entry {
            enabled: true,
            types: vec![kind.to_owned()],
            uris: vec![uri],
            suites: vec![suite],
            components: words.collect(),
        });
    }
    entries
}

fn deb822_entries(text: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut entry = Entry { enabled: true, ..Entry::default() };
    let mut field: Option<String> = None;
    for line in text.lines().chain([""]) {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !entry.types.is_empty() {
                entries.push(entry);
            }
            entry = Entry { enabled: true, ..Entry::default() };
            field = None;
            continue;
        }
        // A line starting with white space continues the previous field.
        let value = if line.starts_with(char::is_whitespace) {
            line
        } else if let Some((key, value)) = line.split_once(':') {
            field = Some(key.trim().to_ascii_lowercase());
            value
        } else {
            continue;
        };
        let words = value.split_whitespace().map(str::to_owned);
        match field.as_deref() {
            Some("types") => entry.types.extend(words),
            Some("uris") => entry.uris.extend(words),
            Some("suites") => entry.suites.extend(words),
            Some("components") => entry.components.extend(words),
            Some("enabled") => entry.enabled = !value.trim().eq_ignore_ascii_case("no"),
            _ => {}
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    // Example hosts only (RFC 2606 names), never a real mirror.
    const ONE_LINE: &str = "\
# deb http://old.example.org/debian bookworm main
deb-src http://src.example.org/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://security.example.org/debian-security bookworm-security main
deb http://mirror.example.org/debian/ bookworm main contrib # the main one
";

    const DEB822: &str = "\
Types: deb
# a comment inside the stanza
URIs: http://mirror.example.com/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.example.com/debian-security
Suites: bookworm-security
Components: main
";

    #[test]
    fn one_line_sources_skip_comments_sources_and_other_suites() {
        let sources = [(Format::OneLine, ONE_LINE.to_owned())];
        assert_eq!(mirror_in(&sources).as_deref(), Some("http://mirror.example.org/debian"));
    }

    #[test]
    fn deb822_sources_read_multi_valued_fields() {
        let sources = [(Format::Deb822, DEB822.to_owned())];
        assert_eq!(mirror_in(&sources).as_deref(), Some("http://mirror.example.com/debian"));
    }

    #[test]
    fn deb822_disabled_stanzas_and_continuation_lines() {
        let text = "\
Types: deb
URIs: http://off.example.com/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb-src deb
URIs:
 http://on.example.com/debian
Suites: bookworm
Components: contrib
 main
";
        let sources = [(Format::Deb822, text.to_owned())];
        assert_eq!(mirror_in(&sources).as_deref(), Some("http://on.example.com/debian"));
    }

    #[test]
    fn no_bookworm_main_gives_none() {
        let text = "deb http://mirror.example.org/debian trixie main\n";
        assert_eq!(mirror_in(&[(Format::OneLine, text.to_owned())]), None);
    }
}
