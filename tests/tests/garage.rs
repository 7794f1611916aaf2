//! The Garage harness against a real S3 client (object_store).

use std::net::TcpStream;

use nexus_tests::Garage;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

const BUCKET: &str = "nexus-harness";

#[test]
fn objects_round_trip_through_a_started_garage() {
    let garage = Garage::start().unwrap_or_else(|e| panic!("{e}"));
    garage.create_bucket(BUCKET).unwrap_or_else(|e| panic!("{e}"));
    let store = garage.client(BUCKET);
    // 1 MiB that differs at every offset modulo 251 (a prime), so a shifted or truncated
    // read cannot compare equal.
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let key = Path::from("dir/object.bin");
        store.put(&key, PutPayload::from(data.clone())).await.expect("put");
        let got = store.get(&key).await.expect("get").bytes().await.expect("body");
        assert_eq!(got.len(), data.len());
        assert!(got == data, "object bytes differ after a round trip");

        let missing = store.get(&Path::from("dir/missing.bin")).await;
        assert!(
            matches!(missing, Err(object_store::Error::NotFound { .. })),
            "expected NotFound, got {missing:?}"
        );
    });
}

#[test]
fn stop_kills_the_server() {
    let mut garage = Garage::start().unwrap_or_else(|e| panic!("{e}"));
    let addr = garage.endpoint.trim_start_matches("http://").to_owned();
    assert!(TcpStream::connect(&addr).is_ok(), "S3 port closed while running");
    garage.stop();
    assert!(TcpStream::connect(&addr).is_err(), "S3 port still open after stop");
}
