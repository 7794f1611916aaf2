//! Writes the seed corpora, `seeds/<target>/<name>`: a handful of valid inputs per fuzz target,
//! from which libFuzzer mutates. `cargo xtask fuzz` runs it before fuzzing, so the seeds always
//! match the input layouts in `src/lib.rs` and the targets' docs.

use std::fs;
use std::path::Path;

use nexus_channel::layout::Header;
use nexus_channel::wire::{flags, Op};
use nexus_channel::{CallDesc, Geometry, ResultDesc};
use nexus_fuzz::calls::{self, Call};
use nexus_fuzz::{bytes_of, calls_geometry, results_geometry, ring_image};

/// A target's seeds: file name and bytes.
type Seeds = Vec<(&'static str, Vec<u8>)>;

fn main() -> std::io::Result<()> {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let targets: [(&str, Seeds); 8] = [
        ("call_parser", call_parser()),
        ("hostile_region", hostile_region()),
        ("staging_directory", staging_directory()),
        ("geometry_header", geometry_header()),
        ("call_ops", call_ops()),
        ("invocation_results", invocation_results()),
        ("api_json", api_json()),
        ("config_yaml", config_yaml()),
    ];
    for (target, inputs) in targets {
        let dir = seeds.join(target);
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)?;
        for (name, bytes) in inputs {
            fs::write(dir.join(name), bytes)?;
        }
    }
    Ok(())
}

/// A call descriptor in guest buffer `buffer` for `op` on `parts` (bucket, key, params) with
/// `body`, and the request bytes that go at the start of the buffer.
fn request(op: Op, buffer: u32, parts: [&str; 3], body: &[u8]) -> (CallDesc, Vec<u8>) {
    let [bucket, key, params] = parts;
    let desc = CallDesc {
        tag: 1,
        op: op as u16,
        buffer,
        bucket_len: bucket.len() as u16,
        key_len: key.len() as u16,
        params_len: params.len() as u32,
        body_len: body.len() as u64,
        ..CallDesc::default()
    };
    let bytes = [bucket.as_bytes(), key.as_bytes(), params.as_bytes(), body].concat();
    (desc, bytes)
}

fn call_parser() -> Seeds {
    let cases = [
        ("ping", request(Op::Ping, 0, ["", "", ""], b"")),
        ("get", request(Op::Get, 1, ["photos", "in/cat.jpg", r#"{"Range":"bytes=10-19"}"#], b"")),
        (
            "put",
            request(
                Op::Put,
                2,
                ["photos", "out/cat.jpg", r#"{"ContentType":"image/jpeg","Metadata":{"a":"b"}}"#],
                b"data",
            ),
        ),
        (
            "list",
            request(
                Op::List,
                0,
                ["photos", "", r#"{"Prefix":"in/","Delimiter":"/","MaxKeys":2}"#],
                b"",
            ),
        ),
        ("invoke", request(Op::Invoke, 0, ["", "resize", r#"{"InvocationType":"Event"}"#], b"{}")),
        ("read", (CallDesc { op: Op::Read as u16, stream: 7, ..CallDesc::default() }, vec![])),
    ];
    cases
        .into_iter()
        .map(|(name, (desc, args))| (name, [bytes_of(&desc), &args].concat()))
        .collect()
}

fn hostile_region() -> Seeds {
    let geometry = calls_geometry();
    let (get, args) = request(Op::Get, 0, ["photos", "k", ""], b"");
    let (head, _) = request(Op::Head, 1, ["photos", "k", ""], b"");
    let (put, put_args) = request(Op::Put, 2, ["photos", "k", r#"{"ContentType":"a/b"}"#], b"body");
    let put = CallDesc { flags: flags::MORE, ..put };
    vec![
        ("get-head", [ring_image(&geometry, 2, &[get, head]), args].concat()),
        ("put", [ring_image(&geometry, 1, &[put]), put_args].concat()),
        ("corrupt-index", ring_image(&geometry, 100, &[get])),
    ]
}

fn staging_directory() -> Seeds {
    let directory = |offset: u64| {
        let json = format!(
            r#"{{"objects":[{{"bucket":"b","key":"k","offset":{offset},"size":5,"meta":{{"ETag":"\"1\""}}}}]}}"#
        );
        [&(json.len() as u64).to_le_bytes()[..], json.as_bytes()].concat()
    };
    vec![("inside", directory(64 << 10)), ("outside", directory(1 << 40))]
}

fn geometry_header() -> Seeds {
    let header = |geometry: Geometry| {
        let header = Header { geometry: geometry.to_line(), ..Header::default() };
        [bytes_of(&header), &geometry.region_size.to_le_bytes()].concat()
    };
    vec![
        ("default", header(Geometry::with_staging(128 << 20, 2 << 20, 64, 4, 64 << 20).unwrap())),
        ("no-staging", header(Geometry::new(1 << 20, 4 << 10, 2, 1).unwrap())),
        // More buffers fit than a u32 counts.
        ("huge", header(Geometry::new(1 << 45, 4 << 10, 2, 1).unwrap())),
    ]
}

fn call_ops() -> Seeds {
    let call = |op: Op, buffer: u8| Call { op: op as u8, buffer, ..Call::default() };
    let object = |op: Op, key: &'static str, params: &'static str, body: &'static [u8]| {
        calls::encode(call(op, 0), [b"bucket", key.as_bytes(), params.as_bytes(), body])
    };
    let chunk = |op: Op, flags: u8, stream: u8, body: &[u8]| {
        calls::encode(Call { flags, stream, ..call(op, 1) }, [b"", b"", b"", body])
    };
    // The calls one after another, as the target will read them back.
    let frame = |made: &[Vec<u8>]| {
        let bytes = made.concat();
        assert_eq!(calls::decode(&bytes).count(), made.len(), "a call the target cannot read");
        bytes
    };
    let life = frame(&[
        calls::encode(call(Op::Ping, 0), [&[]; 4]),
        object(Op::Put, "in/a", r#"{"ContentType":"text/plain","Metadata":{"k":"v"}}"#, b"hello"),
        object(Op::Head, "in/a", "", b""),
        object(Op::Get, "in/a", r#"{"Range":"bytes=1-3"}"#, b""),
        object(Op::List, "", r#"{"Prefix":"in/","Delimiter":"/","MaxKeys":1}"#, b""),
        object(Op::Delete, "in/a", "", b""),
        object(Op::Get, "in/a", "", b""),
    ]);
    let big = [7; 2000];
    let streams = frame(&[
        calls::encode(
            Call { flags: flags::MORE as u8, ..call(Op::Put, 1) },
            [b"bucket", b"big", b"", &big],
        ),
        chunk(Op::Write, flags::MORE as u8, 1, &big),
        chunk(Op::Write, 0, 1, &big),
        object(Op::Get, "big", "", b""),
        chunk(Op::Read, 0, 2, b""),
        chunk(Op::Close, 0, 2, b""),
    ]);
    let refused = frame(&[
        calls::encode(call(Op::Put, 0), [b"other", b"in/x", b"", b"no"]),
        calls::encode(
            call(Op::Invoke, 0),
            [b"", b"callee", br#"{"InvocationType":"DryRun"}"#, b"{}"],
        ),
        calls::encode(call(Op::Get, 250), [b"bucket", b"k", b"", b""]),
    ]);
    vec![
        ("life", [&[0], &life[..]].concat()),
        ("life-write-back", [&[1], &life[..]].concat()),
        ("streams", [&[0], &streams[..]].concat()),
        ("streams-write-back", [&[1], &streams[..]].concat()),
        ("refused", [&[0], &refused[..]].concat()),
    ]
}

fn invocation_results() -> Seeds {
    let geometry = results_geometry();
    // The first invocation sent takes the last host buffer, the second the one before.
    let last = geometry.buffer_count - 1;
    let result =
        |id, buffer, status, len| ResultDesc { id, buffer, status, len, ..ResultDesc::default() };
    let ok = br#"{"statusCode": 200}"#;
    vec![
        (
            "one",
            [&[1], &ring_image(&geometry, 1, &[result(1, last, 0, ok.len() as u64)])[..], ok]
                .concat(),
        ),
        (
            "two-one-raised",
            [
                &[2],
                &ring_image(&geometry, 2, &[result(2, last - 1, 1, 5), result(1, last, 0, 19)])[..],
                ok,
            ]
            .concat(),
        ),
        ("wrong-buffer", [&[1], &ring_image(&geometry, 1, &[result(1, 0, 0, 4)])[..]].concat()),
    ]
}

fn api_json() -> Seeds {
    let spec = r#"{"name":"compress","code":"examples/compress","handler":"handler.py:handler",
        "flavour":"nexus","vmm":"qemu","max_vms":4,"memory_mib":256,"vcpus":1,"timeout_secs":60,
        "environment":{"A":"b"},"policy":{"grants":[{"bucket":"demo","prefix":"in/",
        "access":["read","list"]}],"max_object_size":"64MiB","requests_per_second":null,
        "invoke":["resize"]}}"#;
    vec![
        ("region", br#"{"function":"thumbnailer"}"#.to_vec()),
        ("function", spec.as_bytes().to_vec()),
        ("invoke-query", b"timeout=2.5".to_vec()),
        // The bounds a deadline is clamped to.
        ("invoke-query-zero", b"timeout=0".to_vec()),
        ("invoke-query-inf", b"timeout=inf".to_vec()),
        ("prefetch", br#"[{"bucket":"demo","key":"inputs/words.txt"}]"#.to_vec()),
    ]
}

fn config_yaml() -> Seeds {
    let minimal = "storage: { url: \"s3://\" }\nregion: { size: 1MiB, buffer_size: 4KiB, \
                   staging_size: 0 }\nfunctions:\n  f: { policy: { grants: [{ bucket: b, \
                   access: [read] }] } }\n";
    vec![
        ("nexus.yaml", include_bytes!("../../../configs/nexus.yaml").to_vec()),
        ("minimal.yaml", minimal.as_bytes().to_vec()),
    ]
}
