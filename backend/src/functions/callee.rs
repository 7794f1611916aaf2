//! The deployed functions as the callee of guests' `Invoke` calls (`ops::invoke`).

use std::sync::Arc;

use futures::future::BoxFuture;
use nexus_channel::wire::Status;

use super::{FunctionError, Functions};
use crate::invoke::Outcome;
use crate::ops::invoke::Invoker;
use crate::ops::OpError;
use crate::storage::error_chain;

impl Invoker for Functions {
    fn invoke(
        self: Arc<Self>,
        function: String,
        event: Vec<u8>,
    ) -> BoxFuture<'static, Result<Outcome, OpError>> {
        Box::pin(async move {
            match Functions::invoke(&self, &function, &event, &[]).await {
                Ok(invoked) => Ok(invoked.outcome),
                Err(FunctionError::NoFunction(name)) => {
                    Err(OpError::new(Status::NoSuchKey, format!("Function not found: {name}")))
                }
                Err(e) => {
                    tracing::warn!(%function, "Invoke from a guest failed: {}", error_chain(&e));
                    let message = format!("{function} could not run: {e}");
                    Err(OpError::new(Status::ServiceUnavailable, message))
                }
            }
        })
    }
}
