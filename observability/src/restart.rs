//! A stage's sessions, started again after each failure: exponential backoff with full jitter, as
//! in Vector's `src/sinks/util/retries.rs`. The n-th wait is uniform in `[0, min(cap, base·2ⁿ)]`,
//! so stages that failed together (in one broker or store outage) do not all come back at the same
//! instant. A session that ran a while was healthy, and the schedule starts over after it.

use std::future::Future;
use std::time::{Duration, Instant};

use rand::Rng as _;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// A session that ran this long before failing was healthy: the next wait starts from the base.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// Waits between attempts: each drawn uniformly up to a ceiling that doubles, up to a cap.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    ceiling: Duration,
}

impl Backoff {
    /// The restart schedule of the pipeline's stages: ceilings of 200 ms, 400 ms, … up to 10 s.
    pub const STAGE: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));

    pub const fn new(base: Duration, cap: Duration) -> Self {
        Backoff { base, cap, ceiling: base }
    }

    /// The next wait, uniform in `[0, ceiling]`; the ceiling then doubles, up to the cap.
    pub fn next_wait(&mut self) -> Duration {
        let wait = rand::thread_rng().gen_range(Duration::ZERO..=self.ceiling);
        self.ceiling = self.ceiling.saturating_mul(2).min(self.cap);
        wait
    }

    /// Back to the first ceiling.
    pub fn reset(&mut self) {
        self.ceiling = self.base;
    }
}

/// Runs `session` until it returns `Ok(())` or `shutdown` fires. After each failure `failed`
/// reports it with the wait before the next session, and `stage` shows as down
/// (`cashflow_pipeline_stage_up` 0) until a session marks it up again.
pub async fn restarting<E, S, R, F>(stage: &str, shutdown: &CancellationToken, mut session: S, mut failed: F)
where
    S: FnMut() -> R,
    R: Future<Output = Result<(), E>>,
    F: FnMut(&E, Duration),
{
    let mut backoff = Backoff::STAGE;
    metrics().stage_up(stage, false);
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        let result = session().await;
        metrics().stage_up(stage, false);
        let Err(e) = result else { return };
        if started.elapsed() > HEALTHY_SESSION {
            backoff.reset();
        }
        let wait = backoff.next_wait();
        failed(&e, wait);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn each_wait_is_at_most_its_ceiling_which_doubles_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1_000));
        for ceiling in [100, 200, 400, 800, 1_000, 1_000, 1_000] {
            let wait = b.next_wait();
            assert!(wait <= Duration::from_millis(ceiling), "{wait:?} over {ceiling} ms");
        }
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(100));
    }

    #[test]
    fn waits_are_spread_over_the_whole_range() {
        // Full jitter: over many draws at a 1 s ceiling, some waits are short and some long.
        let waits: Vec<Duration> =
            (0..200).map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_wait()).collect();
        assert!(waits.iter().any(|w| *w < Duration::from_millis(250)), "no short wait in 200");
        assert!(waits.iter().any(|w| *w > Duration::from_millis(750)), "no long wait in 200");
    }

    #[tokio::test]
    async fn a_failing_session_is_started_again_until_it_succeeds() {
        let shutdown = CancellationToken::new();
        let (runs, mut failures) = (Cell::new(0), Vec::new());
        let session = || {
            runs.set(runs.get() + 1);
            let run = runs.get();
            async move { if run < 3 { Err(run) } else { Ok(()) } }
        };
        restarting("restart-test", &shutdown, session, |e: &i32, wait| failures.push((*e, wait))).await;
        assert_eq!(runs.get(), 3);
        assert_eq!(failures.iter().map(|f| f.0).collect::<Vec<_>>(), [1, 2]);
        assert!(failures.iter().all(|(_, wait)| *wait <= Duration::from_millis(400)));
    }

    #[tokio::test]
    async fn no_session_starts_after_shutdown() {
        let shutdown = CancellationToken::new();
        let runs = Cell::new(0);
        let failing = || {
            runs.set(runs.get() + 1);
            async { Err::<(), _>("down") }
        };
        restarting("restart-test", &shutdown, failing, |_, _| shutdown.cancel()).await;
        assert_eq!(runs.get(), 1);
    }
}
