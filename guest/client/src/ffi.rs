//! C ABI of the guest client, loaded by the Python shim through `ctypes`.
//!
//! ```c
//! typedef struct { uint32_t status, flags; uint64_t meta_len, body_len, object_size, stream; } NexusReply;
//! void       *nexus_open(const char *path);      /* NULL path: find_region(); NULL on error */
//! void        nexus_close(void *client);
//! const char *nexus_last_error(void);              /* this thread's last error message */
//! uint64_t    nexus_buffer_size(const void *client);
//! int         nexus_lease(const void *client, uint32_t *index, uint8_t **ptr);
//! int         nexus_release(const void *client, uint32_t index);
//! int         nexus_call(const void *client, uint16_t op, uint16_t flags, uint32_t buffer,
//!                        uint16_t bucket_len, uint16_t key_len, uint32_t params_len,
//!                        uint64_t body_len, uint64_t stream, NexusReply *reply);
//!
//! typedef struct { const uint8_t *ptr; uint64_t len, meta_len; } NexusStaged;
//! int         nexus_staged(const void *client, const uint8_t *bucket, uint64_t bucket_len,
//!                          const uint8_t *key, uint64_t key_len,
//!                          uint8_t *meta, uint64_t meta_capacity, NexusStaged *out);
//!                                                  /* 1: staged (its Get meta JSON copied to
//!                                                     meta), 0: not staged, -1: error */
//!
//! typedef struct { uint64_t id; uint32_t buffer, _pad; uint8_t *ptr; uint64_t len, capacity; } NexusInvocation;
//! int         nexus_ready(const void *client);     /* ready for invocations of this epoch */
//! int         nexus_next_invocation(const void *client, uint64_t timeout_ms, NexusInvocation *out);
//!                                                  /* 1: got one, 0: timed out, -1: error */
//! int         nexus_finish_invocation(const void *client, const NexusInvocation *invocation,
//!                                     uint32_t status, uint64_t len);
//! ```
//!
//! Functions returning `int` answer 0 on success and -1 on error unless noted. Calls that wait
//! block; ctypes releases the GIL around them.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::path::PathBuf;

use crate::client::{Client, ClientError, Reply, Request};
use crate::invocations::Invocation;
use crate::locate::find_region;
use crate::objects::StagedObject;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn fail(message: String) -> c_int {
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|slot| *slot.borrow_mut() = message);
    -1
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Opens a client on the region at `path`, or on the one [`find_region`] finds when `path` is
/// NULL. Returns NULL on error.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn nexus_open(path: *const c_char) -> *mut Client {
    let path = if path.is_null() {
        match find_region() {
            Ok(path) => path,
            Err(e) => {
                fail(e.to_string());
                return std::ptr::null_mut();
            }
        }
    } else {
        // SAFETY: the caller passes a NUL-terminated string.
        PathBuf::from(unsafe { CStr::from_ptr(path) }.to_string_lossy().into_owned())
    };
    match Client::open(&path) {
        Ok(client) => Box::into_raw(Box::new(client)),
        Err(e) => {
            fail(format!("{}: {}", path.display(), error_chain(&e)));
            std::ptr::null_mut()
        }
    }
}

/// Closes a client.
///
/// # Safety
/// `client` came from `nexus_open` and is not used again.
#[no_mangle]
pub unsafe extern "C" fn nexus_close(client: *mut Client) {
    if !client.is_null() {
        // SAFETY: the caller hands back ownership of a pointer from `Box::into_raw`.
        drop(unsafe { Box::from_raw(client) });
    }
}

/// This thread's last error message (empty if none). Valid until the next failing call.
#[no_mangle]
pub extern "C" fn nexus_last_error() -> *const c_char {
    LAST_ERROR.with(|slot| slot.borrow().as_ptr())
}

/// Bytes in each channel buffer.
///
/// # Safety
/// `client` came from `nexus_open`.
#[no_mangle]
pub unsafe extern "C" fn nexus_buffer_size(client: *const Client) -> u64 {
    // SAFETY: the caller passes a live client.
    u64::from(unsafe { &*client }.geometry().buffer_size)
}

/// Leases a buffer.
///
/// # Safety
/// `client` came from `nexus_open`; `index` and `ptr` are writable.
#[no_mangle]
pub unsafe extern "C" fn nexus_lease(
    client: *const Client,
    index: *mut u32,
    ptr: *mut *mut u8,
) -> c_int {
    // SAFETY: the caller passes a live client.
    match unsafe { &*client }.lease() {
        Ok((i, p)) => {
            // SAFETY: the caller passes a writable `index`.
            unsafe { *index = i };
            // SAFETY: the caller passes a writable `ptr`.
            unsafe { *ptr = p };
            0
        }
        Err(e) => fail(e.to_string()),
    }
}

/// Returns a leased buffer.
///
/// # Safety
/// `client` came from `nexus_open`.
#[no_mangle]
pub unsafe extern "C" fn nexus_release(client: *const Client, index: u32) -> c_int {
    // SAFETY: the caller passes a live client.
    result(unsafe { &*client }.release(index))
}

/// Makes a call whose request bytes are already in `buffer`.
///
/// # Safety
/// `client` came from `nexus_open`; `reply` is writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn nexus_call(
    client: *const Client,
    op: u16,
    flags: u16,
    buffer: u32,
    bucket_len: u16,
    key_len: u16,
    params_len: u32,
    body_len: u64,
    stream: u64,
    reply: *mut Reply,
) -> c_int {
    let request = Request { op, flags, buffer, bucket_len, key_len, params_len, body_len, stream };
    // SAFETY: the caller passes a live client.
    match unsafe { &*client }.call(&request) {
        Ok(answer) => {
            // SAFETY: the caller passes a writable reply.
            unsafe { *reply = answer };
            0
        }
        Err(e) => fail(e.to_string()),
    }
}

/// Where a staged object lies (see [`Client::staged`]).
#[repr(C)]
#[derive(Debug)]
pub struct NexusStaged {
    pub ptr: *const u8,
    pub len: u64,
    pub meta_len: u64,
}

/// Looks `bucket/key` up among the objects staged for the running invocation: 1 when `out`
/// and `meta` describe it, 0 when it is not staged.
///
/// # Safety
/// `client` came from `nexus_open`; `bucket`, `key` are readable for their lengths, `meta`
/// is writable for `meta_capacity` bytes and `out` is writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn nexus_staged(
    client: *const Client,
    bucket: *const u8,
    bucket_len: u64,
    key: *const u8,
    key_len: u64,
    meta: *mut u8,
    meta_capacity: u64,
    out: *mut NexusStaged,
) -> c_int {
    // SAFETY: the caller passes readable bucket bytes.
    let bucket = unsafe { std::slice::from_raw_parts(bucket, bucket_len as usize) };
    // SAFETY: the caller passes readable key bytes.
    let key = unsafe { std::slice::from_raw_parts(key, key_len as usize) };
    let (Ok(bucket), Ok(key)) = (std::str::from_utf8(bucket), std::str::from_utf8(key)) else {
        return fail("bucket and key must be UTF-8".into());
    };
    // SAFETY: the caller passes a live client.
    match unsafe { &*client }.staged(bucket, key) {
        Ok(None) => 0,
        Ok(Some(StagedObject { meta: json, ptr, len })) => {
            if json.len() as u64 > meta_capacity {
                return fail(format!("staged meta needs {} bytes", json.len()));
            }
            // SAFETY: `meta` is writable for `meta_capacity` bytes, checked above to hold them.
            unsafe { std::ptr::copy_nonoverlapping(json.as_ptr(), meta, json.len()) };
            let staged = NexusStaged { ptr, len: len as u64, meta_len: json.len() as u64 };
            // SAFETY: the caller passes a writable `out`.
            unsafe { *out = staged };
            1
        }
        Err(e) => fail(error_chain(&e)),
    }
}

fn result(r: Result<(), ClientError>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => fail(e.to_string()),
    }
}

/// Tells the host this guest is ready for invocations.
///
/// # Safety
/// `client` came from `nexus_open`.
#[no_mangle]
pub unsafe extern "C" fn nexus_ready(client: *const Client) -> c_int {
    // SAFETY: the caller passes a live client.
    result(unsafe { &*client }.ready())
}

/// Waits up to `timeout_ms` for an invocation: 1 when `out` holds one, 0 on timeout.
///
/// # Safety
/// `client` came from `nexus_open`; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn nexus_next_invocation(
    client: *const Client,
    timeout_ms: u64,
    out: *mut Invocation,
) -> c_int {
    // SAFETY: the caller passes a live client.
    let client = unsafe { &*client };
    match client.next_invocation(std::time::Duration::from_millis(timeout_ms)) {
        Ok(Some(invocation)) => {
            // SAFETY: the caller passes a writable `out`.
            unsafe { *out = invocation };
            1
        }
        Ok(None) => 0,
        Err(e) => fail(e.to_string()),
    }
}

/// Publishes the result of an invocation from `nexus_next_invocation`.
///
/// # Safety
/// `client` came from `nexus_open`; `invocation` points to one it returned.
#[no_mangle]
pub unsafe extern "C" fn nexus_finish_invocation(
    client: *const Client,
    invocation: *const Invocation,
    status: u32,
    len: u64,
) -> c_int {
    // SAFETY: the caller passes a live client.
    let client = unsafe { &*client };
    // SAFETY: the caller passes a readable invocation.
    let invocation = unsafe { &*invocation };
    result(client.finish_invocation(invocation, status, len))
}
