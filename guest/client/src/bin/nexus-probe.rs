//! `nexus-probe`: a guest-side load generator for benchmarks. Maps the region named by
//! `NEXUS_REGION` (or the ivshmem device) and prints one JSON line of measurements.
//!
//! ```text
//! nexus-probe ping ROUNDS                   round trips of an empty call: p50/p99 in ns
//! nexus-probe get BUCKET SIZE ROUNDS        puts one object, reads it once (the backend caches
//!                                           it), then times ROUNDS whole reads, bytes used in place
//! nexus-probe put BUCKET SIZE ROUNDS        times ROUNDS whole writes
//! ```

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
        _ => {
            Err("usage: nexus-probe ping ROUNDS | get BUCKET SIZE ROUNDS | put BUCKET SIZE ROUNDS"
                .into())
        }
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
