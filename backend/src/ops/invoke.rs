//! `Invoke`: a function calls another deployed function through the backend (boto3's
//! `client("lambda").invoke`), so a chain of functions on one host needs no NIC in any guest.
//!
//! ```text
//!  guest A: Invoke {key: "b", params {InvocationType}, body: event}
//!    ─► policy of A lists b? ─► Invoker (the backend's functions) runs b, cold or warm
//!    ◄─ RequestResponse: {StatusCode 200, FunctionError?} + b's result in A's buffer
//!    ◄─ Event: {StatusCode 202} at once; b runs on its own    DryRun: {StatusCode 204}
//! ```
//! Each VM runs one invocation at a time, so a synchronous call of its own function could wait
//! for itself when the function's pool is full: it is refused. Longer cycles (a → b → a) are
//! not detected: a policy that allows them can wait until the pool's queue gives up.

use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use nexus_channel::wire::{Envelope, InvocationType, Status};
use serde_json::json;

use super::{Context, OpError, Out};
use crate::invoke::Outcome;
use crate::served::{Answer, ServedRegion};

/// What runs a function for an `Invoke`: the backend's deployed functions.
pub trait Invoker: Send + Sync + std::fmt::Debug {
    /// Runs `function` with `event` (cold or warm) and resolves to its outcome.
    fn invoke(
        self: Arc<Self>,
        function: String,
        event: Vec<u8>,
    ) -> BoxFuture<'static, Result<Outcome, OpError>>;
}

/// The invoker, once the backend's functions exist (they hold the backend, so this is weak).
pub type InvokerSlot = std::sync::OnceLock<Weak<dyn Invoker>>;

/// Performs an `Invoke` of `function` by `served`'s function.
pub async fn invoke(
    ctx: &Context,
    served: &ServedRegion,
    function: &str,
    kind: InvocationType,
    envelope: &Envelope,
    out: Out<'_>,
) -> Result<Answer, OpError> {
    served.policy.check_invoke(function)?;
    if function == served.function && kind == InvocationType::RequestResponse {
        let message = format!("{function} cannot wait for itself (a VM of it runs the caller)");
        return Err(OpError::new(Status::InvalidRequest, message));
    }
    let event = out.read(envelope.args_len, envelope.body_len)?;
    if serde_json::from_slice::<serde::de::IgnoredAny>(&event).is_err() {
        return Err(OpError::new(Status::InvalidArgument, "The payload is not JSON"));
    }
    let invoker = ctx.invoker.get().and_then(Weak::upgrade).ok_or_else(|| {
        OpError::new(Status::NotImplemented, "This backend runs no functions to invoke")
    })?;
    let meta = match kind {
        InvocationType::DryRun => json!({ "StatusCode": 204 }),
        InvocationType::Event => {
            let (function, running) = (function.to_owned(), invoker.invoke(function.into(), event));
            tokio::spawn(async move {
                match running.await {
                    Ok(outcome) if !outcome.ok => {
                        tracing::info!(%function, "An Event invocation's handler raised")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(%function, "An Event invocation failed: {}", e.message)
                    }
                }
            });
            json!({ "StatusCode": 202 })
        }
        InvocationType::RequestResponse => {
            let outcome = invoker.invoke(function.into(), event).await?;
            let mut meta = json!({ "StatusCode": 200 });
            if !outcome.ok {
                meta["FunctionError"] = "Unhandled".into();
            }
            let meta_len = out.meta(&meta)?;
            let room = out.len() - meta_len as usize;
            if outcome.result.len() > room {
                let message = format!(
                    "The response of {function} is {} bytes, more than the {room} a channel \
                     buffer holds",
                    outcome.result.len()
                );
                return Err(OpError::new(Status::EntityTooLarge, message));
            }
            out.write(meta_len as usize, &outcome.result)?;
            let body_len = outcome.result.len() as u64;
            return Ok(Answer { meta_len, body_len, ..Answer::default() });
        }
    };
    Ok(Answer { meta_len: out.meta(&meta)?, ..Answer::default() })
}
