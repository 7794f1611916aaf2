//! `cargo xtask fuzz [--time N] [--jobs J]`: runs every cargo-fuzz target of `fuzz/`
//! (libFuzzer, on a nightly toolchain; it and cargo-fuzz are installed first if missing) for N
//! seconds each, J targets at a time, prints one line per target and a table, and records the
//! table in `docs/fuzzing.md`.
//! `cargo xtask test` runs the same briefly ([`smoke`]), recording nothing.
//!
//! ```text
//!  cargo +nightly fuzz build            every target: release, debug assertions, ASan
//!  fuzz/target/…/release/seeds          rewrites fuzz/seeds/<target>/ (committed)
//!  cargo +nightly fuzz run <target> fuzz/corpus/<target> fuzz/seeds/<target> -- -max_total_time=N
//!                                       [-dict=fuzz/dicts/<target>.dict]
//!                                       new inputs go to fuzz/corpus (kept, not committed),
//!                                       libFuzzer's output to fuzz/logs/<target>.log;
//!                                       a crash stops the target and leaves fuzz/artifacts/<target>/
//! ```

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::thread;

use anyhow::{bail, Context, Result};

use crate::{cmd, workspace_root};

/// The bin of the fuzz crate that writes the seed corpora; every other bin is a target.
const SEEDS: &str = "seeds";
/// Where `cargo fuzz build` puts the binaries.
const BINARIES: &str = "fuzz/target/x86_64-unknown-linux-gnu/release";
/// Longest input libFuzzer makes (the targets' layouts fit calls, rings and windows in it).
const MAX_LEN: &str = "-max_len=16384";
/// Where each target's libFuzzer output is kept (not committed).
const LOGS: &str = "fuzz/logs";
/// Seconds one input may take before libFuzzer reports a hang.
const INPUT_TIMEOUT: &str = "-timeout=30";
/// The file the figures are recorded in, and the lines that enclose them there.
const RECORD: &str = "docs/fuzzing.md";
const RECORD_START: &str = "<!-- fuzz figures: written by `cargo xtask fuzz` -->";
const RECORD_END: &str = "<!-- end of fuzz figures -->";

/// What one target's run gave.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Figures {
    target: String,
    seconds: u64,
    /// Inputs executed.
    runs: u64,
    /// Coverage counters hit (libFuzzer's `cov`), and features (`ft`: edges, counts, compares).
    coverage: u64,
    features: u64,
    /// The input that crashed it, if one did (libFuzzer stops at the first).
    crash: Option<String>,
}

/// Fuzzes every target for `seconds`, records the figures in docs/fuzzing.md, and fails if a
/// target crashed.
pub fn run(seconds: u64, jobs: usize) -> Result<()> {
    let figures = campaign(seconds, jobs)?;
    let path = workspace_root().join(RECORD);
    let doc = fs::read_to_string(&path).with_context(|| format!("Cannot read {RECORD}"))?;
    fs::write(&path, with_figures(&doc, seconds, jobs, &table(&figures))?)
        .with_context(|| format!("Cannot write {RECORD}"))?;
    println!("fuzz: figures recorded in {RECORD}");
    verdict(&figures)
}

/// Fuzzes every target for `seconds` (the test run's check), and fails if a target crashed.
pub fn smoke(seconds: u64) -> Result<()> {
    verdict(&campaign(seconds, 1)?)
}

fn verdict(figures: &[Figures]) -> Result<()> {
    let crashed: Vec<_> = figures.iter().filter_map(|f| f.crash.as_deref()).collect();
    if !crashed.is_empty() {
        bail!(
            "{} target(s) crashed; reproduce with `cargo +nightly fuzz run <target> <input>`: {}",
            crashed.len(),
            crashed.join(", ")
        );
    }
    Ok(())
}

/// Builds the targets, writes the seeds, then runs each target for `seconds`, `jobs` targets
/// at a time; prints a line per target and the table.
fn campaign(seconds: u64, jobs: usize) -> Result<Vec<Figures>> {
    install_tools()?;
    let root = workspace_root();
    cmd::run(nightly().args(["fuzz", "build"]).current_dir(root))?;
    cmd::run(Command::new(root.join(BINARIES).join(SEEDS)).current_dir(root))?;
    let queue = Mutex::new(targets(root)?.into_iter().enumerate().collect::<VecDeque<_>>());
    let found = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| -> Result<()> {
                while let Some((i, target)) = queue.lock().ok().and_then(|mut q| q.pop_front()) {
                    let figures = fuzz_target(root, &target, seconds);
                    found
                        .lock()
                        .map_err(|_| anyhow::anyhow!("a fuzz job panicked"))?
                        .push((i, figures));
                }
                Ok(())
            });
        }
    });
    let mut found = found.into_inner().map_err(|_| anyhow::anyhow!("a fuzz job panicked"))?;
    found.sort_by_key(|(i, _)| *i);
    let figures = found.into_iter().map(|(_, f)| f).collect::<Result<Vec<_>>>()?;
    println!("{}", table(&figures));
    Ok(figures)
}

/// Runs one target for `seconds`, keeping libFuzzer's output in its log.
fn fuzz_target(root: &Path, target: &str, seconds: u64) -> Result<Figures> {
    println!("fuzz: {target} for {seconds} s");
    let corpus = Path::new("fuzz/corpus").join(target);
    fs::create_dir_all(root.join(&corpus)).context("Cannot create the fuzz corpus")?;
    let mut run = nightly();
    run.current_dir(root)
        .args(["fuzz", "run", target])
        .arg(corpus)
        .arg(Path::new("fuzz/seeds").join(target))
        .args(["--", &format!("-max_total_time={seconds}"), MAX_LEN, INPUT_TIMEOUT])
        .arg("-print_final_stats=1");
    let dictionary = Path::new("fuzz/dicts").join(format!("{target}.dict"));
    if root.join(&dictionary).exists() {
        run.arg(format!("-dict={}", dictionary.display()));
    }
    let output = run.output().with_context(|| format!("Cannot run fuzz target {target}"))?;
    let log = root.join(LOGS).join(format!("{target}.log"));
    fs::create_dir_all(root.join(LOGS)).context("Cannot create the fuzz logs' folder")?;
    fs::write(&log, &output.stderr).with_context(|| format!("Cannot write {}", log.display()))?;
    let found = parse(target, seconds, &output)?;
    println!("fuzz: {}", line(&found));
    Ok(found)
}

/// The nightly toolchain and cargo-fuzz, installed if missing.
fn install_tools() -> Result<()> {
    let works = |command: &mut Command| command.output().is_ok_and(|o| o.status.success());
    if !works(nightly().arg("--version")) {
        println!("fuzz: installing the nightly toolchain (libFuzzer needs it)");
        cmd::run(
            Command::new("rustup")
                .args(["toolchain", "install", "nightly"])
                .args(["--profile", "minimal"]),
        )?;
    }
    if !works(Command::new("cargo").args(["fuzz", "--version"])) {
        println!("fuzz: installing cargo-fuzz (≈ 1 min, once)");
        cmd::run(cmd::cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// `cargo +nightly` (through rustup's proxy: the cargo running xtask is a stable one).
fn nightly() -> Command {
    let mut command = Command::new("cargo");
    command.arg("+nightly");
    command
}

/// The fuzz targets, as cargo-fuzz lists them.
fn targets(root: &Path) -> Result<Vec<String>> {
    let output = nightly().args(["fuzz", "list"]).current_dir(root).output()?;
    if !output.status.success() {
        bail!("`cargo fuzz list` failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let list = String::from_utf8(output.stdout).context("`cargo fuzz list` printed non-UTF-8")?;
    Ok(list
        .lines()
        .map(str::trim)
        .filter(|t| !t.is_empty() && *t != SEEDS)
        .map(Into::into)
        .collect())
}

/// The figures of a target's run from libFuzzer's output.
fn parse(target: &str, seconds: u64, output: &Output) -> Result<Figures> {
    let log = String::from_utf8_lossy(&output.stderr);
    let stat = |name: &str| {
        log.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let after = |line: &str, word: &str| {
        let rest = &line[line.find(word)? + word.len()..];
        rest.split_whitespace().next()?.parse::<u64>().ok()
    };
    let last_status = log.lines().rev().find(|line| line.contains(" cov: "));
    let (coverage, features) = last_status
        .map(|line| (after(line, " cov: ").unwrap_or(0), after(line, " ft: ").unwrap_or(0)))
        .unwrap_or((0, 0));
    let crash = if output.status.success() {
        None
    } else {
        let written = log
            .lines()
            .find_map(|line| Some(line.split("Test unit written to ").nth(1)?.trim().to_owned()));
        let tail: Vec<_> = log.lines().rev().take(40).collect();
        eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        match written {
            Some(input) => Some(format!("{target}: {input}")),
            None => bail!("fuzz target {target} failed to run ({}): see above", output.status),
        }
    };
    let runs = stat("stat::number_of_executed_units:");
    Ok(Figures { target: target.into(), seconds, runs, coverage, features, crash })
}

/// One target's summary line.
fn line(f: &Figures) -> String {
    let crashes = f.crash.as_deref().map_or("0".into(), |c| format!("1 ({c})"));
    format!(
        "{}: {} runs in {} s, coverage {} ({} features), crashes {crashes}",
        f.target, f.runs, f.seconds, f.coverage, f.features
    )
}

/// The markdown table of a campaign.
fn table(figures: &[Figures]) -> String {
    let mut out = String::from(
        "| target | seconds | runs | runs/s | coverage | features | crashes |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for f in figures {
        let crashes = if f.crash.is_some() { 1 } else { 0 };
        let rate = f.runs / f.seconds.max(1);
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {rate} | {} | {} | {crashes} |",
            f.target, f.seconds, f.runs, f.coverage, f.features
        );
    }
    out
}

/// `doc` with the text between the record markers replaced by `table`, the figures of a run of
/// `seconds` a target, `jobs` targets at a time.
fn with_figures(doc: &str, seconds: u64, jobs: usize, table: &str) -> Result<String> {
    let (Some(start), Some(end)) = (doc.find(RECORD_START), doc.find(RECORD_END)) else {
        bail!("{RECORD} lacks the lines {RECORD_START} and {RECORD_END}");
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let head = &doc[..start + RECORD_START.len()];
    let note = format!(
        "Last run: `cargo xtask fuzz --time {seconds} --jobs {jobs}`, {jobs} target(s) at a time \
         on {cores} cores."
    );
    Ok(format!("{head}\n{note}\n\n{table}{}", &doc[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_read_from_libfuzzer_output() {
        use std::os::unix::process::ExitStatusExt;
        let log = "#2\tINITED cov: 10 ft: 11 corp: 2/3b exec/s: 0 rss: 30Mb\n\
                   #4096\tpulse  cov: 120 ft: 300 corp: 9/1Kb exec/s: 2048 rss: 31Mb\n\
                   Done 5000 runs in 2 second(s)\n\
                   stat::number_of_executed_units: 5000\n\
                   stat::average_exec_per_sec:     2500\n";
        let output = |code, log: &str| Output {
            status: std::process::ExitStatus::from_raw(code),
            stdout: vec![],
            stderr: log.as_bytes().to_vec(),
        };
        let figures = parse("t", 2, &output(0, log)).unwrap();
        assert_eq!((figures.runs, figures.coverage, figures.features), (5000, 120, 300));
        assert_eq!(figures.crash, None);
        let crashed = format!("{log}artifact_prefix='a/'; Test unit written to a/crash-1\n");
        let figures = parse("t", 2, &output(1 << 8, &crashed)).unwrap();
        assert_eq!(figures.crash.as_deref(), Some("t: a/crash-1"));
        assert!(parse("t", 2, &output(1 << 8, "error: no such target")).is_err());
    }

    #[test]
    fn the_record_replaces_only_the_figures() {
        let doc = format!("# Fuzzing\n\n{RECORD_START}\nold\n{RECORD_END}\n\nafter\n");
        let new = with_figures(&doc, 60, 2, "| new |\n").unwrap();
        let head = format!(
            "# Fuzzing\n\n{RECORD_START}\nLast run: `cargo xtask fuzz --time 60 --jobs 2`, 2 target"
        );
        assert!(new.starts_with(&head), "{new}");
        assert!(new.ends_with(&format!("| new |\n{RECORD_END}\n\nafter\n")));
        assert!(!new.contains("old"));
        assert!(with_figures("# no markers", 60, 1, "").is_err());
    }
}
