//! Open proxy connections per endpoint, and when the last one closed: what the control
//! plane suspends idle endpoints by. Shared between the proxy's tasks and the control plane.

use std::time::{Duration, Instant};

/// Open connections per endpoint, and when the last one closed.
#[derive(Debug, Default)]
pub struct Activity {
    endpoints: std::sync::Mutex<std::collections::HashMap<String, EndpointActivity>>,
}

#[derive(Debug, Clone, Copy)]
struct EndpointActivity {
    open: u64,
    last: Instant,
}

impl Activity {
    /// A connection to `endpoint` opens (counted before its compute is woken, so that it
    /// cannot be suspended between waking and connecting).
    pub fn open(&self, endpoint: &str) {
        let mut map = self.endpoints.lock().expect("activity lock");
        let entry = map.entry(endpoint.to_string()).or_insert(EndpointActivity {
            open: 0,
            last: Instant::now(),
        });
        entry.open += 1;
        entry.last = Instant::now();
    }

    pub fn close(&self, endpoint: &str) {
        let mut map = self.endpoints.lock().expect("activity lock");
        if let Some(entry) = map.get_mut(endpoint) {
            entry.open = entry.open.saturating_sub(1);
            entry.last = Instant::now();
        }
    }

    /// Marks `endpoint` active now (a start through the API).
    pub fn touch(&self, endpoint: &str) {
        let mut map = self.endpoints.lock().expect("activity lock");
        let entry = map.entry(endpoint.to_string()).or_insert(EndpointActivity {
            open: 0,
            last: Instant::now(),
        });
        entry.last = Instant::now();
    }

    /// How long `endpoint` has had no open connection; `None` while one is open.
    pub fn idle_for(&self, endpoint: &str, now: Instant) -> Option<Duration> {
        let map = self.endpoints.lock().expect("activity lock");
        match map.get(endpoint) {
            Some(entry) if entry.open > 0 => None,
            Some(entry) => Some(now.saturating_duration_since(entry.last)),
            None => Some(Duration::MAX),
        }
    }

    pub fn forget(&self, endpoint: &str) {
        self.endpoints
            .lock()
            .expect("activity lock")
            .remove(endpoint);
    }
}
