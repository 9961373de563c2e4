//! Waiting without sleeps sprinkled through tests: one helper, patience from the
//! environment (`FLOWGUARD_PATIENCE_S`, default 30 s).

use std::time::{Duration, Instant};

pub fn patience() -> Duration {
    let secs = std::env::var("FLOWGUARD_PATIENCE_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(secs)
}

/// Polls `probe` until it returns `Some`, or gives up after the patience with `what`.
pub fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> Result<T, String> {
    let deadline = Instant::now() + patience();
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "timed out after {:?} waiting for {what}",
                patience()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
