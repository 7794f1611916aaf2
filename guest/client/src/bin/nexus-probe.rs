//! `nexus-probe`: a guest-side load generator for benchmarks. Maps the region named by
//! `NEXUS_REGION` (or the ivshmem device) and prints one JSON line of measurements.
//!
//! ```text
//! nexus-probe ping ROUNDS                   round trips of an empty call: p50/p99 in ns
//! nexus-probe get BUCKET SIZE ROUNDS        puts one object, reads it once (the backend caches
//!                                           it), then times ROUNDS whole reads, bytes used in place
//! nexus-probe put BUCKET SIZE ROUNDS        times ROUNDS whole writes
//! nexus-probe soak BUCKET PREFIX SECONDS [ACKED]
//!                                           mixed calls for SECONDS, errors counted, never
//!                                           fatal: put PREFIX/N (¼-16 KiB), get it back and
//!                                           check it, every 4th N a list of PREFIX, every odd
//!                                           N a delete; each kept key whose put was
//!                                           acknowledged is appended to the file ACKED as
//!                                           "KEY SIZE ETAG"
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nexus_guest::{find_region, Client};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("nexus-probe: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<serde_json::Value, String> {
    let number = |i: usize| -> Result<u64, String> {
        args.get(i)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("argument {i} must be a number"))
    };
    let path = find_region().map_err(|e| e.to_string())?;
    let client = Client::open(&path).map_err(|e| e.to_string())?;
    match args.first().map(String::as_str) {
        Some("ping") => ping(&client, number(1)?),
        Some("get") => get(&client, args.get(1).ok_or("missing BUCKET")?, number(2)?, number(3)?),
        Some("put") => put(&client, args.get(1).ok_or("missing BUCKET")?, number(2)?, number(3)?),
        Some("soak") => soak(
            &client,
            args.get(1).ok_or("missing BUCKET")?,
            args.get(2).ok_or("missing PREFIX")?,
            Duration::from_secs(number(3)?),
            args.get(4).map(File::create).transpose().map_err(|e| e.to_string())?,
        ),
        _ => Err("usage: nexus-probe ping ROUNDS | get BUCKET SIZE ROUNDS | put BUCKET SIZE \
                  ROUNDS | soak BUCKET PREFIX SECONDS [ACKED]"
            .into()),
    }
}

fn ping(client: &Client, rounds: u64) -> Result<serde_json::Value, String> {
    for _ in 0..rounds / 10 {
        client.ping().map_err(|e| e.to_string())?;
    }
    let mut samples = Vec::with_capacity(rounds as usize);
    for _ in 0..rounds {
        let start = Instant::now();
        client.ping().map_err(|e| e.to_string())?;
        samples.push(start.elapsed());
    }
    samples.sort();
    Ok(serde_json::json!({
        "rounds": rounds,
        "p50_ns": percentile(&samples, 50).as_nanos() as u64,
        "p99_ns": percentile(&samples, 99).as_nanos() as u64,
    }))
}

fn get(client: &Client, bucket: &str, size: u64, rounds: u64) -> Result<serde_json::Value, String> {
    let key = format!("probe/get-{size}");
    client.put_object(bucket, &key, &pattern(size)).map_err(|e| e.to_string())?;
    let mut checksum = 0u64;
    let mut read = |chunk: &[u8]| checksum = checksum.wrapping_add(fold(chunk));
    client.get_object(bucket, &key, &mut read).map_err(|e| e.to_string())?;
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        let got = client.get_object(bucket, &key, &mut read).map_err(|e| e.to_string())?;
        samples.push(start.elapsed());
        if got != size {
            return Err(format!("read {got} of {size} bytes"));
        }
    }
    Ok(throughput(size, samples, checksum))
}

fn put(client: &Client, bucket: &str, size: u64, rounds: u64) -> Result<serde_json::Value, String> {
    let body = pattern(size);
    let mut samples = Vec::new();
    for round in 0..rounds {
        let start = Instant::now();
        client
            .put_object(bucket, &format!("probe/put-{size}-{round}"), &body)
            .map_err(|e| e.to_string())?;
        samples.push(start.elapsed());
    }
    Ok(throughput(size, samples, 0))
}

/// Latencies and errors of a soak's calls.
#[derive(Default)]
struct Tally {
    samples: Vec<Duration>,
    errors: BTreeMap<String, u64>,
    slowest_error: Duration,
    mismatches: u64,
}

impl Tally {
    /// Times `call`, counting its error (by S3 code) if it fails.
    fn time<T>(&mut self, call: impl FnOnce() -> Result<T, nexus_guest::ClientError>) -> Option<T> {
        let start = Instant::now();
        let result = call();
        let took = start.elapsed();
        self.samples.push(took);
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                let code = match &e {
                    nexus_guest::ClientError::Status { code, .. } => code.clone(),
                    other => other.to_string(),
                };
                *self.errors.entry(code).or_default() += 1;
                self.slowest_error = self.slowest_error.max(took);
                None
            }
        }
    }
}

fn soak(
    client: &Client,
    bucket: &str,
    prefix: &str,
    seconds: Duration,
    mut acked: Option<File>,
) -> Result<serde_json::Value, String> {
    let deadline = Instant::now() + seconds;
    let mut tally = Tally::default();
    let mut n = 0u64;
    while Instant::now() < deadline {
        let key = format!("{prefix}/{n}");
        let size = 256 + (n.wrapping_mul(2_654_435_761) % (16 * 1024));
        let body: Vec<u8> = pattern(size).into_iter().map(|b| b ^ n as u8).collect();
        if let Some(etag) = tally.time(|| client.put_object(bucket, &key, &body)) {
            let kept = n % 2 == 0;
            if let (true, Some(file)) = (kept, acked.as_mut()) {
                // One write per line: a kill between two leaves no half line.
                let line = format!("{key} {size} {etag}\n");
                file.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
            }
            let mut checksum = 0u64;
            let read = |chunk: &[u8]| checksum = checksum.wrapping_add(fold(chunk));
            if let Some(got) = tally.time(|| client.get_object(bucket, &key, read)) {
                if got != size || checksum != fold(&body) {
                    tally.mismatches += 1;
                }
            }
            if n % 4 == 0 {
                tally.time(|| client.list_objects(bucket, prefix, 100));
            }
            if !kept {
                tally.time(|| client.delete_object(bucket, &key));
            }
        }
        n += 1;
    }
    let calls = tally.samples.len();
    tally.samples.sort();
    Ok(serde_json::json!({
        "calls": calls,
        "errors": tally.errors,
        "mismatches": tally.mismatches,
        "p50_ns": percentile(&tally.samples, 50).as_nanos() as u64,
        "p99_ns": percentile(&tally.samples, 99).as_nanos() as u64,
        "max_ns": tally.samples.last().copied().unwrap_or_default().as_nanos() as u64,
        "slowest_error_ns": tally.slowest_error.as_nanos() as u64,
    }))
}

fn throughput(size: u64, mut samples: Vec<Duration>, checksum: u64) -> serde_json::Value {
    samples.sort();
    let median = percentile(&samples, 50);
    serde_json::json!({
        "size": size,
        "rounds": samples.len(),
        "median_s": median.as_secs_f64(),
        "bytes_per_s": size as f64 / median.as_secs_f64().max(1e-12),
        "checksum": checksum,
    })
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted.get((sorted.len().saturating_sub(1)) * p / 100).copied().unwrap_or_default()
}

/// Bytes that are not all alike, so nothing along the way can shortcut them.
fn pattern(size: u64) -> Vec<u8> {
    (0..size).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

/// Reads every 8-byte word of a chunk in place (what a function using the data costs).
fn fold(chunk: &[u8]) -> u64 {
    let words = chunk.chunks_exact(8);
    let tail = words.remainder().iter().fold(0u64, |acc, b| acc.wrapping_add(u64::from(*b)));
    words
        .fold(tail, |acc, w| acc.wrapping_add(u64::from_le_bytes(w.try_into().unwrap_or_default())))
}
