//! What a poller does with its core after an empty poll: fwd's workers and the AF_XDP ceiling
//! (`bounce`) decide it here, so that the two are measured with the same behaviour.

use std::time::Duration;

use crate::port::{Port, Wait};

/// What a poller gives up of its core after an empty poll. Busy polling alone (the default) suits
/// a poller with a core of its own; where the interface's receive side runs on the poller's core
/// (threaded NAPI on veth, copy mode), the poller must let it run as soon as frames arrive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdleWait {
    /// Yield the core after every empty poll that does not sleep.
    pub yield_each: bool,
    /// After `wait_after` empty polls in a row, sleep until frames arrive, at most this long
    /// (zero: never).
    pub wait: Duration,
    pub wait_after: u64,
}

impl IdleWait {
    /// Whether it ever sleeps until frames arrive (a poller that naps on its own does not then).
    pub fn sleeps(&self) -> bool {
        !self.wait.is_zero()
    }

    /// Gives the core away after the `empty_streak`-th empty poll in a row, as the policy says.
    /// Returns true when it slept out a whole timeout without frames arriving: the caller should
    /// look at its clock (stop flag, heartbeat) now rather than after more empty polls.
    pub fn after_empty_poll(&self, port: &mut Port, empty_streak: u64) -> bool {
        if self.sleeps() && empty_streak >= self.wait_after {
            match port.wait_for_frames(self.wait) {
                Wait::Frames => false,
                Wait::TimedOut => true,
                // Transmit work kept it from sleeping: the next poll kicks it; meanwhile the core
                // is given away as yield_each would.
                Wait::TxPending => {
                    std::thread::yield_now();
                    false
                }
            }
        } else {
            if self.yield_each {
                std::thread::yield_now();
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::tests::port_steering_vip_v4;
    use crate::testnet::NetnsPair;
    use std::time::Instant;

    /// Before its streak a policy never sleeps, yielding or not; from its streak on, an empty
    /// ring sleeps out the timeout and the call says so. A policy without a wait never sleeps.
    #[test]
    fn an_idle_policy_sleeps_only_from_its_streak_on_and_says_when_the_wait_timed_out() {
        let net = NetnsPair::new();
        let policy = IdleWait { yield_each: true, wait: Duration::from_millis(50), wait_after: 3 };
        let (spun, early, late, late_took, stats) = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    net.a.enter();
                    let (_program, mut port) = port_steering_vip_v4();
                    let spun = IdleWait::default().after_empty_poll(&mut port, 1_000_000);
                    let early = policy.after_empty_poll(&mut port, 2);
                    let before = port.stats().waits;
                    let start = Instant::now();
                    let late = policy.after_empty_poll(&mut port, 3);
                    let late_took = start.elapsed();
                    let mut stats = port.stats();
                    stats.waits -= before;
                    (spun, early, late, late_took, stats)
                })
                .join()
                .expect("port thread")
        });
        assert!(!IdleWait::default().sleeps() && policy.sleeps());
        assert!(!spun, "a policy without a wait reported a timed-out wait");
        assert!(!early, "the policy waited before its streak");
        assert!(late, "the wait on an empty ring did not time out");
        assert!(late_took >= Duration::from_millis(45), "the wait returned after {late_took:?}");
        assert_eq!((stats.waits, stats.wakeups), (1, 0), "only the last call sleeps: {stats:?}");
    }
}
