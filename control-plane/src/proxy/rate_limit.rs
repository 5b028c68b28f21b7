//! Failed logins per (endpoint, source address), to slow down password guessing.
//!
//! A source that fails to log in to an endpoint more than `max_failures` times within
//! `window_ms` is refused for `lockout_ms`; other endpoints and other sources are not
//! affected. A successful login forgets the failures.
//!
//! Pure and synchronous: no I/O and no clock of its own. Every call takes the time as
//! milliseconds from any monotonic origin the caller picks (a `tokio::time::Instant` at
//! start, say), which keeps the tests exact; a clock that goes back is treated as
//! standing still. Memory is bounded: at most `tracked_max` (endpoint, source) pairs are
//! kept, each with at most `max_failures + 1` timestamps; when a new pair would go over,
//! the pair whose failures were recorded longest ago is forgotten first, so a flood of
//! new sources can only push out the least recent ones.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;

/// Failures allowed within the window; the next one locks out.
pub const FAILED_LOGINS_MAX: u32 = 5;
/// How far back failures count, in milliseconds.
pub const FAILED_LOGIN_WINDOW_MS: u64 = 60_000;
/// How long a locked-out source is refused, in milliseconds.
pub const LOCKOUT_MS: u64 = 60_000;
/// The most (endpoint, source) pairs tracked at once.
pub const TRACKED_SOURCES_MAX: usize = 100_000;

type Key = (String, IpAddr);

/// What is known about one (endpoint, source) pair.
#[derive(Debug)]
struct Entry {
    /// When the recent failures happened, oldest first; all within the window of the
    /// last one. Empty while locked out.
    failures: VecDeque<u64>,
    /// Refused until then, exclusive.
    locked_until_ms: Option<u64>,
    /// Its place in `FailedLogins::by_age`.
    age: u64,
}

/// The failed-login counts of all endpoints and sources.
#[derive(Debug)]
pub struct FailedLogins {
    max_failures: u32,
    window_ms: u64,
    lockout_ms: u64,
    tracked_max: usize,
    entries: HashMap<Key, Entry>,
    /// Every entry's key under its `age`: the first is the one touched longest ago.
    by_age: BTreeMap<u64, Key>,
    /// The next `age` to hand out; only grows.
    next_age: u64,
}

impl Default for FailedLogins {
    /// The limits the proxy uses.
    fn default() -> Self {
        FailedLogins::new(
            FAILED_LOGINS_MAX,
            FAILED_LOGIN_WINDOW_MS,
            LOCKOUT_MS,
            TRACKED_SOURCES_MAX,
        )
    }
}

impl FailedLogins {
    /// Allows `max_failures` failures within `window_ms`, refuses for `lockout_ms` after
    /// one more, and tracks at most `tracked_max` pairs (0 tracks nothing and never
    /// refuses).
    pub fn new(max_failures: u32, window_ms: u64, lockout_ms: u64, tracked_max: usize) -> Self {
        FailedLogins {
            max_failures,
            window_ms,
            lockout_ms,
            tracked_max,
            entries: HashMap::new(),
            by_age: BTreeMap::new(),
            next_age: 0,
        }
    }

    /// `Err(retry_after_ms)` while `source` is locked out of `endpoint`: how long until it
    /// may try again. A lockout that has ended is forgotten here, failures and all.
    pub fn check(&mut self, endpoint: &str, source: IpAddr, now_ms: u64) -> Result<(), u64> {
        let key = (endpoint.to_string(), source);
        let Some(until) = self.entries.get(&key).and_then(|e| e.locked_until_ms) else {
            return Ok(());
        };
        if now_ms < until {
            return Err(until - now_ms);
        }
        self.remove(&key);
        Ok(())
    }

    /// Counts a failed login; the one that goes over the limit starts a lockout. Failures
    /// while locked out (which `check` should have refused) neither count nor extend it.
    pub fn record_failure(&mut self, endpoint: &str, source: IpAddr, now_ms: u64) {
        if self.tracked_max == 0 {
            return;
        }
        let key = (endpoint.to_string(), source);
        let age = self.next_age;
        self.next_age += 1;
        let entry = match self.entries.get_mut(&key) {
            Some(entry) => {
                self.by_age.remove(&entry.age);
                entry.age = age;
                entry
            }
            None => {
                while self.entries.len() >= self.tracked_max {
                    let Some((_, oldest)) = self.by_age.pop_first() else {
                        break;
                    };
                    self.entries.remove(&oldest);
                }
                self.entries.entry(key.clone()).or_insert(Entry {
                    failures: VecDeque::new(),
                    locked_until_ms: None,
                    age,
                })
            }
        };
        self.by_age.insert(age, key);

        if let Some(until) = entry.locked_until_ms {
            if now_ms < until {
                return;
            }
            entry.locked_until_ms = None;
        }
        let window_ms = self.window_ms;
        entry
            .failures
            .retain(|&at| now_ms.saturating_sub(at) < window_ms);
        entry.failures.push_back(now_ms);
        if entry.failures.len() > self.max_failures as usize {
            entry.failures.clear();
            entry.locked_until_ms = Some(now_ms.saturating_add(self.lockout_ms));
        }
    }

    /// Forgets the failures of `source` on `endpoint` after it logged in.
    pub fn record_success(&mut self, endpoint: &str, source: IpAddr) {
        self.remove(&(endpoint.to_string(), source));
    }

    /// How many (endpoint, source) pairs are tracked now.
    pub fn tracked(&self) -> usize {
        self.entries.len()
    }

    fn remove(&mut self, key: &Key) {
        if let Some(entry) = self.entries.remove(key) {
            self.by_age.remove(&entry.age);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    fn fail_times(limits: &mut FailedLogins, endpoint: &str, source: IpAddr, n: u32, now: u64) {
        for _ in 0..n {
            assert_eq!(limits.check(endpoint, source, now), Ok(()));
            limits.record_failure(endpoint, source, now);
        }
    }

    #[test]
    fn sixth_failure_locks_out_for_the_lockout() {
        let mut limits = FailedLogins::default();
        let t0 = 1_000_000;
        for i in 0..FAILED_LOGINS_MAX as u64 {
            assert_eq!(limits.check("ep-a", A, t0 + i), Ok(()));
            limits.record_failure("ep-a", A, t0 + i);
        }
        // Five failures: the sixth try is still allowed.
        assert_eq!(limits.check("ep-a", A, t0 + 10), Ok(()));
        limits.record_failure("ep-a", A, t0 + 10);
        assert_eq!(limits.check("ep-a", A, t0 + 10), Err(LOCKOUT_MS));
        assert_eq!(limits.check("ep-a", A, t0 + 20), Err(LOCKOUT_MS - 10));

        // Other endpoints and other sources are not affected.
        assert_eq!(limits.check("ep-b", A, t0 + 20), Ok(()));
        assert_eq!(limits.check("ep-a", B, t0 + 20), Ok(()));
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(limits.check("ep-a", v6, t0 + 20), Ok(()));

        // A failure reported while locked out does not extend the lockout.
        limits.record_failure("ep-a", A, t0 + 30);
        assert_eq!(limits.check("ep-a", A, t0 + 30), Err(LOCKOUT_MS - 20));

        let end = t0 + 10 + LOCKOUT_MS;
        assert_eq!(limits.check("ep-a", A, end - 1), Err(1));
        assert_eq!(limits.check("ep-a", A, end), Ok(()));
        // After the lockout the count starts afresh.
        fail_times(&mut limits, "ep-a", A, FAILED_LOGINS_MAX, end);
        assert_eq!(limits.check("ep-a", A, end), Ok(()));
        limits.record_failure("ep-a", A, end);
        assert!(limits.check("ep-a", A, end).is_err());
    }

    #[test]
    fn lockout_ends_even_without_a_check() {
        let mut limits = FailedLogins::default();
        fail_times(&mut limits, "ep-a", A, FAILED_LOGINS_MAX + 1, 0);
        assert!(limits.check("ep-a", A, 0).is_err());
        // A failure recorded after the lockout ended counts as the first of a new series.
        limits.record_failure("ep-a", A, LOCKOUT_MS);
        assert_eq!(limits.check("ep-a", A, LOCKOUT_MS), Ok(()));
        fail_times(
            &mut limits,
            "ep-a",
            A,
            FAILED_LOGINS_MAX - 1,
            LOCKOUT_MS + 1,
        );
        assert_eq!(limits.check("ep-a", A, LOCKOUT_MS + 1), Ok(()));
        limits.record_failure("ep-a", A, LOCKOUT_MS + 2);
        assert!(limits.check("ep-a", A, LOCKOUT_MS + 2).is_err());
    }

    #[test]
    fn old_failures_do_not_count() {
        let mut limits = FailedLogins::default();
        // One failure every 15 s: at most four are within any 60 s window.
        for i in 0..100u64 {
            let now = i * 15_000;
            assert_eq!(limits.check("ep-a", A, now), Ok(()), "failure {i}");
            limits.record_failure("ep-a", A, now);
        }
        // Five at the end of a window and one just after the first left it.
        let mut limits = FailedLogins::default();
        fail_times(&mut limits, "ep-a", A, 1, 0);
        fail_times(&mut limits, "ep-a", A, 4, FAILED_LOGIN_WINDOW_MS - 1);
        limits.record_failure("ep-a", A, FAILED_LOGIN_WINDOW_MS);
        assert_eq!(limits.check("ep-a", A, FAILED_LOGIN_WINDOW_MS), Ok(()));
        // ... but one more within the window of the other five locks out.
        limits.record_failure("ep-a", A, FAILED_LOGIN_WINDOW_MS + 1);
        assert!(limits.check("ep-a", A, FAILED_LOGIN_WINDOW_MS + 1).is_err());
    }

    #[test]
    fn success_resets() {
        let mut limits = FailedLogins::default();
        fail_times(&mut limits, "ep-a", A, FAILED_LOGINS_MAX, 0);
        fail_times(&mut limits, "ep-b", A, FAILED_LOGINS_MAX, 0);
        limits.record_success("ep-a", A);
        fail_times(&mut limits, "ep-a", A, FAILED_LOGINS_MAX, 1);
        assert_eq!(limits.check("ep-a", A, 1), Ok(()));
        // Only that endpoint's count was reset.
        limits.record_failure("ep-b", A, 1);
        assert!(limits.check("ep-b", A, 1).is_err());
        assert_eq!(limits.tracked(), 2);
        limits.record_success("ep-a", A);
        assert_eq!(limits.tracked(), 1);
    }

    #[test]
    fn clock_going_back_is_harmless() {
        let mut limits = FailedLogins::new(1, 1_000, 1_000, 10);
        limits.record_failure("ep-a", A, 5_000);
        limits.record_failure("ep-a", A, 4_000);
        assert_eq!(limits.check("ep-a", A, 4_000), Err(1_000));
        assert_eq!(limits.check("ep-a", A, 3_000), Err(2_000));
    }

    #[test]
    fn memory_stays_bounded() {
        let tracked_max = 1_000;
        let mut limits = FailedLogins::new(2, 60_000, 60_000, tracked_max);
        // A source locked out early, then a flood of new sources.
        fail_times(&mut limits, "ep-a", A, 3, 0);
        assert!(limits.check("ep-a", A, 0).is_err());
        for i in 0..20_000u32 {
            let source = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i));
            limits.record_failure("ep-a", source, 1);
            assert!(limits.tracked() <= tracked_max);
            assert_eq!(limits.by_age.len(), limits.tracked());
        }
        assert_eq!(limits.tracked(), tracked_max);
        // The oldest went first: the early lockout is forgotten, the latest kept.
        assert_eq!(limits.check("ep-a", A, 2), Ok(()));
        let latest = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + 19_999));
        limits.record_failure("ep-a", latest, 2);
        limits.record_failure("ep-a", latest, 2);
        assert!(limits.check("ep-a", latest, 2).is_err());

        // Touching an entry makes it the newest: it survives the next flood of 999.
        let first_kept = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + 19_000));
        limits.record_failure("ep-a", first_kept, 3);
        for i in 0..(tracked_max as u32 - 1) {
            limits.record_failure("ep-b", IpAddr::V4(Ipv4Addr::from(i)), 3);
        }
        limits.record_failure("ep-a", first_kept, 3);
        assert!(limits.check("ep-a", first_kept, 3).is_err());
        assert_eq!(limits.tracked(), tracked_max);

        let mut nothing = FailedLogins::new(0, 1, 1, 0);
        nothing.record_failure("ep-a", A, 0);
        assert_eq!(nothing.check("ep-a", A, 0), Ok(()));
        assert_eq!(nothing.tracked(), 0);
    }
}
