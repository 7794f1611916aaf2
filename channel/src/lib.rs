//! The Nexus channel: the single definition of the shared-memory region between a function VM
//! (the guest) and the host backend, used by both sides.
//!
//! One region per VM, a power-of-two sized file under `/dev/shm/nexus/`, mapped by the backend
//! and exposed to the guest as an ivshmem-plain BAR2. Its layout:
//!
//! ```text
//!  offset 0      ┌──────────────────────────────────────────────────────────────┐
//!                │ header (4 KiB)                                               │
//!                │   line 0  geometry   magic · version · sizes (host, once)    │
//!                │   line 1  host       epoch · state · guest doorbell · asleep │
//!                │                      · staging directory length              │
//!                │   line 2  guest      epoch ack · state · host doorbell · asleep│
//!  4 KiB         ├──────────────────────────────────────────────────────────────┤
//!                │ ring 0  calls             guest → host   CallDesc            │
//!                │ ring 1  call completions  host  → guest  CompletionDesc      │
//!                │ ring 2  invocations       host  → guest  InvocationDesc      │
//!                │ ring 3  invocation results guest → host  ResultDesc          │
//!                │   each: producer index (own line) · consumer index (own line)│
//!                │         · capacity × 64-byte descriptors                     │
//!  data_offset   ├──────────────────────────────────────────────────────────────┤
//!                │ buffer 0 … buffer G-1        owned by the guest (calls)      │
//!                │ buffer G … buffer N-1        owned by the host (invocation   │
//!                │                              events and results)             │
//!  staging_offset├──────────────────────────────────────────────────────────────┤
//!                │ staging area (optional): objects staged for an invocation,   │
//!                │ read by the guest in place, and their directory              │
//!  region_size   └──────────────────────────────────────────────────────────────┘
//! ```
//!
//! A call names a guest buffer; the request (`[bucket][key][params][body]`) is written there and
//! the host writes its reply (`[meta][body]`) into the same buffer, so payloads are written once
//! and read in place. See [`wire`] for the call protocol, [`ring`] for the index discipline,
//! [`notify`] for how an idle side sleeps and [`staging`] for the staging area.
//!
//! Everything the host reads from a region was written by an untrusted guest: the host keeps
//! its own copy of the geometry and of its ring indices, copies descriptors out before looking
//! at them, and validates every index, offset and length with checked arithmetic.

pub mod layout;
pub mod notify;
pub mod region;
pub mod ring;
pub mod staging;
pub mod volatile;
pub mod wire;

pub use layout::{CallDesc, CompletionDesc, Geometry, InvocationDesc, ResultDesc};
pub use notify::{Kick, Notifier};
pub use region::Region;
pub use ring::{Consumer, Producer};
