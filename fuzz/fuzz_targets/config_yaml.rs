//! Fuzzes the backend's configuration parser: any text must be parsed or refused with a
//! message, never panic, and a configuration it accepts must hold what the rest of the backend
//! takes on trust (a region geometry that computes, function names that can name regions).
//!
//! Input: the YAML text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_backend::config::{is_function_name, Config};

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else { return };
    let Ok(config) = Config::parse(text, "fuzz") else { return };
    let geometry = config.region.geometry();
    assert!(geometry.guest_buffers >= 1 && geometry.guest_buffers <= geometry.buffer_count);
    assert!(config.limits.max_inflight >= 1 && config.limits.max_inflight_per_region >= 1);
    for name in config.functions.keys() {
        assert!(is_function_name(name), "{name:?}");
    }
});
