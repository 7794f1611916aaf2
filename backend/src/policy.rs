//! Per-function access policy: which buckets and prefixes a function may touch, how, how large
//! its objects may be, how many requests per second it may make, and which functions it may
//! invoke.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::byte_size;

/// What a call does to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    List,
    Delete,
}

/// Why a call was denied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Denied {
    /// No grant covers the bucket, prefix and access.
    #[error("{access:?} access to {bucket}/{key} is not allowed for this function")]
    NotGranted { access: Access, bucket: String, key: String },
    /// The object is larger than the policy allows.
    #[error("Object of {size} bytes exceeds the {max}-byte limit for this function")]
    TooLarge { size: u64, max: u64 },
    /// The function called faster than its rate limit.
    #[error("Request rate above {rate} per second for this function")]
    RateLimited { rate: u32 },
    /// The policy does not list the function it invoked.
    #[error("This function may not invoke {function} (its policy's `invoke` list)")]
    NotInvocable { function: String },
}

impl Denied {
    /// The metrics label of this reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::NotGranted { .. } => "not_granted",
            Denied::TooLarge { .. } => "too_large",
            Denied::RateLimited { .. } => "rate_limited",
            Denied::NotInvocable { .. } => "not_invocable",
        }
    }
}

/// The rate every region gets unless its policy says otherwise: far above what a handler
/// doing real I/O asks for (each call costs microseconds of backend CPU), low enough that one
/// guest spinning on calls cannot take the backend's workers from the others.
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 10_000;

/// A function's policy. The default denies everything.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    pub grants: Vec<Grant>,
    /// Largest object the function may read or write, in bytes.
    #[serde(deserialize_with = "byte_size::deserialize")]
    pub max_object_size: u64,
    /// Sustained request rate; `None` (an explicit `null`) is unlimited. Default:
    /// [`DEFAULT_REQUESTS_PER_SECOND`].
    pub requests_per_second: Option<u32>,
    /// Requests allowed at once after a quiet period; `None` is `requests_per_second`.
    pub burst: Option<u32>,
    /// The functions it may invoke (`boto3.client("lambda").invoke`); none by default.
    pub invoke: Vec<String>,
}

/// Access to the keys of one bucket that start with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    pub access: Vec<Access>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            grants: Vec::new(),
            max_object_size: 5 << 30,
            requests_per_second: Some(DEFAULT_REQUESTS_PER_SECOND),
            burst: None,
            invoke: Vec::new(),
        }
    }
}

impl Policy {
    /// Checks `access` to `key` (a list prefix for `Access::List`) in `bucket`.
    pub fn check(&self, access: Access, bucket: &str, key: &str) -> Result<(), Denied> {
        let granted = self.grants.iter().any(|g| {
            g.bucket == bucket && key.starts_with(&g.prefix) && g.access.contains(&access)
        });
        if granted {
            Ok(())
        } else {
            Err(Denied::NotGranted { access, bucket: bucket.into(), key: key.into() })
        }
    }

    /// Checks that the function may invoke `function`.
    pub fn check_invoke(&self, function: &str) -> Result<(), Denied> {
        if self.invoke.iter().any(|f| f == function) {
            Ok(())
        } else {
            Err(Denied::NotInvocable { function: function.into() })
        }
    }

    /// Checks an object size against the limit.
    pub fn check_size(&self, size: u64) -> Result<(), Denied> {
        if size > self.max_object_size {
            return Err(Denied::TooLarge { size, max: self.max_object_size });
        }
        Ok(())
    }

    /// What this policy allows beyond `ceiling`, if anything: a grant (an access, on a bucket
    /// and prefix) no grant of `ceiling` covers, a larger size limit, a higher rate or burst,
    /// a function to invoke that `ceiling` does not list. `None`: it is at most `ceiling`.
    pub fn widening_of(&self, ceiling: &Policy) -> Option<String> {
        for grant in &self.grants {
            for access in &grant.access {
                let covered = ceiling.grants.iter().any(|c| {
                    c.bucket == grant.bucket
                        && grant.prefix.starts_with(&c.prefix)
                        && c.access.contains(access)
                });
                if !covered {
                    let (bucket, prefix) = (&grant.bucket, &grant.prefix);
                    return Some(format!("{access:?} access to {bucket}/{prefix}"));
                }
            }
        }
        if self.max_object_size > ceiling.max_object_size {
            return Some(format!("max_object_size {}", self.max_object_size));
        }
        if let Some(rate) = ceiling.requests_per_second {
            let burst = ceiling.burst.unwrap_or(rate);
            match self.requests_per_second {
                None => return Some("requests_per_second: unlimited".into()),
                Some(own) if own > rate => return Some(format!("requests_per_second {own}")),
                Some(own) if self.burst.unwrap_or(own) > burst => {
                    return Some(format!("burst {}", self.burst.unwrap_or(own)))
                }
                Some(_) => {}
            }
        }
        let callee = self.invoke.iter().find(|f| !ceiling.invoke.contains(f));
        callee.map(|function| format!("invoke {function}"))
    }
}

/// A token bucket of `burst` tokens refilled at `requests_per_second`; each request takes one.
///
/// The bucket is kept as the instant it will be full again, so refilling is a subtraction and
/// needs no timer: the tokens missing at `now` are `(full_at - now) / interval`.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    rate: u32,
    /// Time to earn one token.
    interval: Duration,
    /// Time to fill the empty bucket: `burst` intervals.
    capacity: Duration,
    /// When the bucket is full again; `None` until the first request.
    full_at: Option<Instant>,
}

impl RateLimiter {
    /// A full bucket for `policy`, or `None` if it has no rate limit (or a zero rate, which
    /// [`crate::config::Config::parse`] rejects).
    pub fn new(policy: &Policy) -> Option<Self> {
        let rate = policy.requests_per_second?;
        let interval = Duration::from_secs(1).checked_div(rate)?;
        let burst = policy.burst.unwrap_or(rate);
        Some(Self { rate, interval, capacity: interval.saturating_mul(burst), full_at: None })
    }

    /// Takes a token at `now`, or says the function is over its rate.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Denied> {
        let full_at = self.full_at.map_or(now, |at| at.max(now));
        let after = full_at + self.interval;
        if after.duration_since(now) > self.capacity {
            return Err(Denied::RateLimited { rate: self.rate });
        }
        self.full_at = Some(after);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(grants: &[(&str, &str, &[Access])]) -> Policy {
        let grants = grants
            .iter()
            .map(|(bucket, prefix, access)| Grant {
                bucket: (*bucket).into(),
                prefix: (*prefix).into(),
                access: access.to_vec(),
            })
            .collect();
        Policy { grants, ..Default::default() }
    }

    fn limited(rate: u32, burst: Option<u32>) -> RateLimiter {
        let policy = Policy { requests_per_second: Some(rate), burst, ..Default::default() };
        RateLimiter::new(&policy).unwrap()
    }

    #[test]
    fn default_denies_everything() {
        let policy = Policy::default();
        let denied = policy.check(Access::Read, "b", "k").unwrap_err();
        assert_eq!(
            denied,
            Denied::NotGranted { access: Access::Read, bucket: "b".into(), key: "k".into() }
        );
        assert_eq!(denied.to_string(), "Read access to b/k is not allowed for this function");
        assert_eq!(denied.reason(), "not_granted");
    }

    #[test]
    fn grants_cover_their_prefix() {
        let policy = policy(&[("images", "uploads/", &[Access::Read, Access::List])]);
        assert!(policy.check(Access::Read, "images", "uploads/a.png").is_ok());
        assert!(policy.check(Access::List, "images", "uploads/").is_ok());
        assert!(policy.check(Access::Read, "images", "thumbs/a.png").is_err());
        assert!(policy.check(Access::Read, "other", "uploads/a.png").is_err());
        // Listing above the prefix would reveal keys outside it.
        assert!(policy.check(Access::List, "images", "").is_err());
    }

    #[test]
    fn grants_cover_their_access_kinds() {
        let policy = policy(&[("b", "", &[Access::Write]), ("b", "tmp/", &[Access::Delete])]);
        assert!(policy.check(Access::Write, "b", "x").is_ok());
        assert!(policy.check(Access::Read, "b", "x").is_err());
        assert!(policy.check(Access::Delete, "b", "x").is_err());
        assert!(policy.check(Access::Delete, "b", "tmp/x").is_ok());
        assert!(policy.check(Access::List, "b", "tmp/").is_err());
    }

    #[test]
    fn a_policy_within_another_widens_nothing() {
        let ceiling = Policy {
            max_object_size: 1000,
            requests_per_second: Some(100),
            burst: Some(200),
            invoke: vec!["resize".into()],
            ..policy(&[("b", "in/", &[Access::Read, Access::List]), ("b", "", &[Access::Write])])
        };
        assert_eq!(ceiling.widening_of(&ceiling), None);
        let narrower = Policy {
            max_object_size: 10,
            requests_per_second: Some(5),
            burst: None,
            invoke: Vec::new(),
            ..policy(&[("b", "in/jpg/", &[Access::Read]), ("b", "out/", &[Access::Write])])
        };
        assert_eq!(narrower.widening_of(&ceiling), None);
        // Access kinds may come from different grants of the ceiling.
        let both = Policy {
            grants: policy(&[("b", "in/x", &[Access::Read, Access::Write])]).grants,
            ..narrower.clone()
        };
        assert_eq!(both.widening_of(&ceiling), None);

        let widens = |change: fn(&mut Policy)| {
            let mut wider = narrower.clone();
            change(&mut wider);
            wider.widening_of(&ceiling)
        };
        let said = |s: &str| Some(s.to_owned());
        assert_eq!(widens(|p| p.grants[0].prefix = String::new()), said("Read access to b/"));
        assert_eq!(widens(|p| p.grants[0].bucket = "c".into()), said("Read access to c/in/jpg/"));
        assert_eq!(
            widens(|p| p.grants[1].access.push(Access::Delete)),
            said("Delete access to b/out/")
        );
        assert_eq!(widens(|p| p.max_object_size = 1001), said("max_object_size 1001"));
        assert_eq!(
            widens(|p| p.requests_per_second = None),
            said("requests_per_second: unlimited")
        );
        assert_eq!(widens(|p| p.requests_per_second = Some(101)), said("requests_per_second 101"));
        assert_eq!(widens(|p| p.burst = Some(201)), said("burst 201"));
        assert_eq!(widens(|p| p.invoke.push("other".into())), said("invoke other"));
        // An unlimited ceiling takes any rate.
        let unlimited = Policy { requests_per_second: None, ..ceiling.clone() };
        let fast = Policy { requests_per_second: None, ..narrower.clone() };
        assert_eq!(fast.widening_of(&unlimited), None);
    }

    #[test]
    fn size_limit() {
        let policy = Policy { max_object_size: 100, ..Default::default() };
        assert!(policy.check_size(100).is_ok());
        let denied = policy.check_size(101).unwrap_err();
        assert_eq!(denied, Denied::TooLarge { size: 101, max: 100 });
        assert_eq!(denied.reason(), "too_large");
        assert_eq!(Policy::default().max_object_size, 5 << 30);
    }

    #[test]
    fn a_rate_limit_is_on_unless_turned_off() {
        let unset: Policy = serde_norway::from_str("grants: []").unwrap();
        assert_eq!(unset.requests_per_second, Some(DEFAULT_REQUESTS_PER_SECOND));
        assert!(RateLimiter::new(&unset).is_some());
        let off: Policy = serde_norway::from_str("requests_per_second: null").unwrap();
        assert!(RateLimiter::new(&off).is_none());
    }

    #[test]
    fn no_rate_no_limiter() {
        let unlimited = Policy { requests_per_second: None, ..Default::default() };
        assert!(RateLimiter::new(&unlimited).is_none());
        let zero = Policy { requests_per_second: Some(0), ..Default::default() };
        assert!(RateLimiter::new(&zero).is_none());
    }

    #[test]
    fn bucket_allows_a_burst_then_refills() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut limiter = limited(10, Some(3));
        for _ in 0..3 {
            limiter.try_acquire(at(0)).unwrap();
        }
        let denied = limiter.try_acquire(at(0)).unwrap_err();
        assert_eq!(denied, Denied::RateLimited { rate: 10 });
        assert_eq!(denied.reason(), "rate_limited");
        assert_eq!(denied.to_string(), "Request rate above 10 per second for this function");
        // One token every 100 ms.
        assert!(limiter.try_acquire(at(99)).is_err());
        limiter.try_acquire(at(100)).unwrap();
        assert!(limiter.try_acquire(at(150)).is_err());
        limiter.try_acquire(at(200)).unwrap();
        // A long pause refills the bucket, but never beyond the burst.
        for _ in 0..3 {
            limiter.try_acquire(at(10_000)).unwrap();
        }
        assert!(limiter.try_acquire(at(10_000)).is_err());
    }

    #[test]
    fn burst_defaults_to_the_rate() {
        let start = Instant::now();
        let mut limiter = limited(5, None);
        for _ in 0..5 {
            limiter.try_acquire(start).unwrap();
        }
        assert!(limiter.try_acquire(start).is_err());
        // A steady 5 per second is always allowed.
        for i in 1..=50 {
            limiter.try_acquire(start + Duration::from_millis(200 * i)).unwrap();
        }
    }
}
