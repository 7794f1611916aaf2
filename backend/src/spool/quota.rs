//! Each function's share of the spool: uploads it may have open at once, and bytes it may
//! hold there (open uploads plus entries waiting for upload), charged chunk by chunk as the
//! bytes arrive, before they reach the disk.
//!
//! ```text
//!  Writer::create ──► open an upload      (refused past max_function_uploads)
//!  Writer::append ──► charge the chunk    (refused past max_function_bytes)
//!  Writer::commit ──► the upload closes; its bytes stay charged to the queued entry
//!  entry uploaded, superseded or abandoned ──► its bytes are released
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A function went over its share.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// Too many uploads open at once.
    #[error("Function {function} has {max} uploads open already: finish one first")]
    Uploads { function: String, max: u32 },
    /// Too many bytes in the spool.
    #[error("Function {function} holds {max} bytes in the write-back spool already: retry once they are uploaded")]
    Bytes { function: String, max: u64 },
}

/// The shares, and what each function uses.
#[derive(Debug)]
pub struct Quotas {
    max_uploads: u32,
    max_bytes: u64,
    usage: Mutex<HashMap<String, Usage>>,
}

#[derive(Debug, Default)]
struct Usage {
    uploads: u32,
    bytes: u64,
}

impl Quotas {
    pub fn new(max_uploads: u32, max_bytes: u64) -> Arc<Self> {
        Arc::new(Self { max_uploads, max_bytes, usage: Mutex::default() })
    }

    /// Opens an upload for `function`, if it has fewer than its share open.
    pub fn open(self: &Arc<Self>, function: &str) -> Result<Charge, QuotaError> {
        let mut usage = self.lock();
        let used = usage.entry(function.to_owned()).or_default();
        if used.uploads >= self.max_uploads {
            return Err(QuotaError::Uploads { function: function.into(), max: self.max_uploads });
        }
        used.uploads += 1;
        Ok(Charge { quotas: self.clone(), function: function.into(), bytes: 0, open: true })
    }

    /// Bytes `function` holds in the spool.
    #[cfg(test)]
    pub fn bytes(&self, function: &str) -> u64 {
        self.lock().get(function).map_or(0, |u| u.bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Usage>> {
        self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What one put holds of its function's share; released when dropped.
#[derive(Debug)]
pub struct Charge {
    quotas: Arc<Quotas>,
    function: String,
    bytes: u64,
    /// Counts as an open upload.
    open: bool,
}

impl Charge {
    /// Charges `bytes` more, if the function stays within its share.
    pub fn add(&mut self, bytes: u64) -> Result<(), QuotaError> {
        let mut usage = self.quotas.lock();
        let used = usage.entry(self.function.clone()).or_default();
        let max = self.quotas.max_bytes;
        if used.bytes.saturating_add(bytes) > max {
            return Err(QuotaError::Bytes { function: self.function.clone(), max });
        }
        used.bytes += bytes;
        self.bytes += bytes;
        Ok(())
    }

    /// The upload is complete: it no longer counts as open; its bytes stay charged.
    pub fn close(&mut self) {
        if std::mem::take(&mut self.open) {
            if let Some(used) = self.quotas.lock().get_mut(&self.function) {
                used.uploads -= 1;
            }
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let mut usage = self.quotas.lock();
        if let Some(used) = usage.get_mut(&self.function) {
            used.bytes -= self.bytes;
            used.uploads -= u32::from(self.open);
            if used.bytes == 0 && used.uploads == 0 {
                usage.remove(&self.function);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_and_bytes_are_charged_per_function_and_released() {
        let quotas = Quotas::new(2, 100);
        let mut a = quotas.open("f").unwrap();
        let _b = quotas.open("f").unwrap();
        assert!(matches!(quotas.open("f"), Err(QuotaError::Uploads { max: 2, .. })));
        let other = quotas.open("g").unwrap();
        a.add(60).unwrap();
        assert!(matches!(a.add(41), Err(QuotaError::Bytes { max: 100, .. })));
        a.add(40).unwrap();
        a.close();
        assert_eq!(quotas.bytes("f"), 100);
        let mut c = quotas.open("f").unwrap();
        assert!(c.add(1).is_err(), "closed uploads keep their bytes charged");
        drop(a);
        c.add(100).unwrap();
        drop((c, other));
        assert_eq!(quotas.bytes("f"), 0);
    }
}
