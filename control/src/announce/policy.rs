//! The announcer's decision core: given whether a prefix wants to be announced, decides whether it
//! is, after hold-down and flap damping. Pure and clock-injected (every call takes `now`), so the
//! timing rules are tested exactly with a fake clock.
//!
//! The rules, per prefix:
//! - A withdraw is never delayed: announcing a VIP that cannot serve blackholes its traffic, and
//!   damping exists to protect routers from churn, not to keep broken announcements alive.
//! - The first announcement of a prefix is immediate: it is not a flap.
//! - Afterwards a withdrawn prefix is announced again only once it has wanted to be announced
//!   continuously for `hold_down`, and at least `hold_down` after its last change; so a full
//!   withdraw-announce cycle takes at least `hold_down` whatever the input does.
//! - Flap damping, RFC 2439 style: each withdraw of an announced prefix adds `penalty` to a figure
//!   of merit that halves every `half_life`. When a withdraw leaves it above `suppress`, the prefix
//!   is suppressed: it stays withdrawn until the figure falls below `reuse`. The figure grows only
//!   on withdraws, and a suppressed prefix cannot be withdrawn again, so it stays below
//!   `suppress + penalty` and no ceiling is needed.

use crate::config::DampingConfig;
use std::time::{Duration, Instant};

/// RFC 2439 flap damping of one prefix.
#[derive(Clone, Debug)]
pub struct Damping {
    config: DampingConfig,
    /// The figure of merit as of `updated`.
    penalty: f64,
    updated: Option<Instant>,
    suppressed: bool,
}

impl Damping {
    pub fn new(config: DampingConfig) -> Damping {
        Damping { config, penalty: 0.0, updated: None, suppressed: false }
    }

    /// The figure of merit at `now`: the recorded penalty halved once per elapsed half-life.
    pub fn penalty(&self, now: Instant) -> f64 {
        let Some(updated) = self.updated else { return 0.0 };
        let half_lives = now.saturating_duration_since(updated).as_secs_f64() / self.half_life_secs();
        self.penalty * 0.5f64.powf(half_lives)
    }

    /// Counts one flap (a withdraw of an announced prefix); suppresses above the threshold.
    pub fn record_flap(&mut self, now: Instant) {
        self.penalty = self.penalty(now) + f64::from(self.config.penalty);
        self.updated = Some(now);
        if self.penalty > f64::from(self.config.suppress) {
            self.suppressed = true;
        }
    }

    /// Lifts the suppression once the penalty has decayed below `reuse`; returns whether the
    /// prefix is still suppressed.
    pub fn refresh(&mut self, now: Instant) -> bool {
        if self.suppressed && self.penalty(now) < f64::from(self.config.reuse) {
            self.suppressed = false;
        }
        self.suppressed
    }

    /// Suppressed as of the last `record_flap` or `refresh`.
    pub fn is_suppressed(&self) -> bool {
        self.suppressed
    }

    /// When a suppressed prefix's penalty falls below `reuse`: `half_life * log2(penalty / reuse)`
    /// after the last flap, plus a millisecond so float rounding cannot make it early.
    pub fn reuse_at(&self) -> Option<Instant> {
        let updated = self.updated.filter(|_| self.suppressed)?;
        let half_lives = (self.penalty / f64::from(self.config.reuse)).log2().max(0.0);
        let wait = Duration::try_from_secs_f64(half_lives * self.half_life_secs()).ok()?;
        updated.checked_add(wait + Duration::from_millis(1))
    }

    /// Takes new thresholds, keeping the accumulated penalty.
    pub fn set_config(&mut self, config: DampingConfig, now: Instant) {
        self.penalty = self.penalty(now);
        self.updated = self.updated.map(|_| now);
        self.config = config;
        if self.penalty > f64::from(self.config.suppress) {
            self.suppressed = true;
        }
        self.refresh(now);
    }

    fn half_life_secs(&self) -> f64 {
        // Validation keeps half_life at 1 s or more; the floor only guards code-built configs.
        self.config.half_life.as_secs_f64().max(1e-3)
    }
}

/// Hold-down and damping of one prefix: turns the wanted state into the effective one.
#[derive(Clone, Debug)]
pub struct PrefixPolicy {
    hold_down: Duration,
    damping: Damping,
    effective: bool,
    last_change: Option<Instant>,
    /// Since when the prefix has wanted to be announced without interruption.
    wanted_since: Option<Instant>,
}

impl PrefixPolicy {
    pub fn new(hold_down: Duration, damping: DampingConfig) -> PrefixPolicy {
        PrefixPolicy {
            hold_down,
            damping: Damping::new(damping),
            effective: false,
            last_change: None,
            wanted_since: None,
        }
    }

    /// Feeds the wanted state at `now` and returns the effective one. Call it whenever the input
    /// changes and at [`PrefixPolicy::next_event`].
    pub fn update(&mut self, now: Instant, want: bool) -> bool {
        if want {
            self.wanted_since.get_or_insert(now);
        } else {
            self.wanted_since = None;
        }
        let suppressed = self.damping.refresh(now);
        if self.effective && !want {
            self.effective = false;
            self.last_change = Some(now);
            self.damping.record_flap(now);
        } else if !self.effective && want && !suppressed && self.hold_down_over(now) {
            self.effective = true;
            self.last_change = Some(now);
        }
        self.effective
    }

    /// When `update` could next change the effective state with the wanted state unchanged: the
    /// end of the hold-down or of a suppression. `None` when nothing is pending.
    pub fn next_event(&self) -> Option<Instant> {
        if self.effective {
            return None;
        }
        let wanted_since = self.wanted_since?;
        let mut at = self.last_change.map(|last| (wanted_since + self.hold_down).max(last + self.hold_down));
        if let Some(reuse) = self.damping.reuse_at() {
            at = Some(at.map_or(reuse, |t| t.max(reuse)));
        }
        at
    }

    pub fn effective(&self) -> bool {
        self.effective
    }

    pub fn last_change(&self) -> Option<Instant> {
        self.last_change
    }

    pub fn penalty(&self, now: Instant) -> f64 {
        self.damping.penalty(now)
    }

    pub fn suppressed(&self) -> bool {
        self.damping.is_suppressed()
    }

    /// How long a wanted but withdrawn prefix still waits for its hold-down (not counting a
    /// suppression); `None` when it is not waiting for one.
    pub fn hold_down_remaining(&self, now: Instant) -> Option<Duration> {
        if self.effective || self.wanted_since.is_none() {
            return None;
        }
        let wanted_since = self.wanted_since?;
        let last = self.last_change?;
        let end = (wanted_since + self.hold_down).max(last + self.hold_down);
        Some(end.saturating_duration_since(now)).filter(|d| !d.is_zero())
    }

    /// Takes a reloaded configuration, keeping the state.
    pub fn set_config(&mut self, hold_down: Duration, damping: DampingConfig, now: Instant) {
        self.hold_down = hold_down;
        self.damping.set_config(damping, now);
    }

    fn hold_down_over(&self, now: Instant) -> bool {
        let Some(last) = self.last_change else { return true };
        let wanted_since = self.wanted_since.unwrap_or(now);
        now.saturating_duration_since(wanted_since) >= self.hold_down
            && now.saturating_duration_since(last) >= self.hold_down
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn damping() -> DampingConfig {
        DampingConfig { half_life: Duration::from_secs(60), suppress: 3000, reuse: 750, penalty: 1000 }
    }

    fn policy(hold_down: Duration) -> PrefixPolicy {
        PrefixPolicy::new(hold_down, damping())
    }

    #[test]
    fn first_announce_is_immediate_and_withdraw_always_is() {
        let t0 = Instant::now();
        let mut p = policy(5 * SECOND);
        assert!(!p.update(t0, false));
        assert!(p.update(t0 + SECOND, true));
        assert_eq!(p.last_change(), Some(t0 + SECOND));
        // Withdrawn 1 ms after the announcement: no hold-down on withdraws.
        assert!(!p.update(t0 + SECOND + Duration::from_millis(1), false));
        assert_eq!(p.last_change(), Some(t0 + SECOND + Duration::from_millis(1)));
    }

    #[test]
    fn hold_down_is_exact() {
        let t0 = Instant::now();
        let hold = 5 * SECOND;
        let mut p = policy(hold);
        p.update(t0, true);
        p.update(t0 + SECOND, false);
        let wanted = t0 + 3 * SECOND;
        assert!(!p.update(wanted, true));
        assert_eq!(p.next_event(), Some(wanted + hold));
        assert_eq!(p.hold_down_remaining(wanted + SECOND), Some(4 * SECOND));
        assert!(!p.update(wanted + hold - Duration::from_nanos(1), true));
        assert!(p.update(wanted + hold, true));
        assert_eq!(p.next_event(), None);
        assert_eq!(p.hold_down_remaining(wanted + hold), None);
    }

    #[test]
    fn hold_down_counts_from_the_withdraw_when_the_want_came_back_at_once() {
        let t0 = Instant::now();
        let mut p = policy(5 * SECOND);
        p.update(t0, true);
        // The withdraw and the renewed want in the same instant: 5 s from then, not earlier.
        p.update(t0 + SECOND, false);
        assert!(!p.update(t0 + SECOND, true));
        assert!(!p.update(t0 + 6 * SECOND - Duration::from_millis(1), true));
        assert!(p.update(t0 + 6 * SECOND, true));
    }

    #[test]
    fn an_interrupted_want_restarts_the_hold_down() {
        let t0 = Instant::now();
        let mut p = policy(5 * SECOND);
        p.update(t0, true);
        p.update(t0, false);
        p.update(t0 + SECOND, true);
        p.update(t0 + 5 * SECOND, false);
        assert!(!p.update(t0 + 6 * SECOND, true));
        assert!(!p.update(t0 + 6 * SECOND + 4 * SECOND, true));
        assert!(p.update(t0 + 11 * SECOND, true));
    }

    #[test]
    fn penalty_halves_every_half_life() {
        let t0 = Instant::now();
        let mut d = Damping::new(damping());
        assert_eq!(d.penalty(t0), 0.0);
        d.record_flap(t0);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert!(close(d.penalty(t0), 1000.0));
        assert!(close(d.penalty(t0 + Duration::from_secs(60)), 500.0));
        assert!(close(d.penalty(t0 + Duration::from_secs(120)), 250.0));
        assert!(close(d.penalty(t0 + Duration::from_secs(30)), 1000.0 / 2f64.sqrt()));
        d.record_flap(t0 + Duration::from_secs(60));
        assert!(close(d.penalty(t0 + Duration::from_secs(60)), 1500.0));
        assert!(!d.is_suppressed());
    }

    #[test]
    fn suppress_above_threshold_and_reuse_below() {
        let t0 = Instant::now();
        let mut d = Damping::new(damping());
        // Three flaps at one instant reach exactly 3000: not above suppress.
        for _ in 0..3 {
            d.record_flap(t0);
        }
        assert!(!d.is_suppressed() && d.reuse_at().is_none());
        d.record_flap(t0);
        assert!(d.is_suppressed());
        // 4000 -> 750 takes log2(4000/750) = 2.415 half-lives = 144.9 s.
        let reuse = d.reuse_at().unwrap();
        let expected = Duration::from_secs_f64(60.0 * (4000.0f64 / 750.0).log2());
        let wait = reuse - t0;
        assert!(wait >= expected && wait <= expected + Duration::from_millis(2), "{wait:?}");
        assert!(d.refresh(reuse - Duration::from_millis(5)));
        assert!(!d.refresh(reuse));
        assert!(d.penalty(reuse) < 750.0);
    }

    #[test]
    fn suppressed_prefix_stays_withdrawn_until_reuse() {
        let t0 = Instant::now();
        let mut p = policy(5 * SECOND);
        // Up 10 s, down 10 s: slower than the hold-down, so only damping stops it.
        let mut announces = Vec::new();
        let mut suppressed_during = Vec::new();
        let mut penalty_at_90 = 0.0;
        for second in 0..260u64 {
            let now = t0 + Duration::from_secs(second);
            let was = p.effective();
            if p.update(now, second % 20 < 10) && !was {
                announces.push(second);
            }
            if p.suppressed() {
                suppressed_during.push(second);
            }
            if second == 90 {
                penalty_at_90 = p.penalty(now);
            }
        }
        // Withdraws at 10, 30, 50, 70 s leave 1000, 1794, 2424, 2924 (20 s is a third of a
        // half-life: x 0.794 between flaps); the one at 90 s reaches 3320 > 3000.
        let decay = 0.5f64.powf(20.0 / 60.0);
        let at_90 = (((1000.0 * decay + 1000.0) * decay + 1000.0) * decay + 1000.0) * decay + 1000.0;
        assert!((penalty_at_90 - at_90).abs() < 1e-6, "{penalty_at_90} vs {at_90}");
        assert!(at_90 > 3000.0 && at_90 < 3400.0, "{at_90}");
        // Suppressed from 90 s until the penalty falls below 750: 60 s * log2(3320 / 750) later.
        let reuse = 90.0 + 60.0 * (at_90 / 750.0).log2();
        assert_eq!(suppressed_during.first(), Some(&90));
        assert_eq!(*suppressed_during.last().unwrap(), reuse.floor() as u64, "reuse at {reuse}");
        // Announced at once, then 5 s into each up phase, then not until the first up phase
        // that starts after the reuse time (220 s) has lasted 5 s.
        assert_eq!(&announces[..6], &[0, 25, 45, 65, 85, 225], "{announces:?}");
    }

    #[test]
    fn one_second_flapping_for_ten_minutes_changes_at_most_as_allowed() {
        let t0 = Instant::now();
        let hold = 5 * SECOND;
        let mut p = policy(hold);
        let mut changes = Vec::new();
        let mut was = false;
        for i in 0..600u32 {
            let now = t0 + SECOND * i;
            let eff = p.update(now, i % 2 == 0);
            if eff != was {
                changes.push((i, eff));
                was = eff;
            }
        }
        // Announced at once, withdrawn a second later, and never again: the want never lasts 5 s.
        assert_eq!(changes, vec![(0, true), (1, false)]);
        assert!(!p.suppressed());
    }

    #[test]
    fn reload_keeps_the_penalty() {
        let t0 = Instant::now();
        let mut p = policy(SECOND);
        p.update(t0, true);
        p.update(t0, false);
        let stricter = DampingConfig { suppress: 900, reuse: 100, ..damping() };
        p.set_config(SECOND, stricter, t0);
        assert!(p.suppressed());
        assert!((p.penalty(t0) - 1000.0).abs() < 1e-6);
        assert!(!p.update(t0 + 10 * SECOND, true));
    }

    /// An independent model of the damping figure, replayed over the same withdraw times.
    fn model_penalty(withdraws: &[Instant], now: Instant, half_life: f64) -> f64 {
        withdraws
            .iter()
            .filter(|&&w| w <= now)
            .map(|&w| 1000.0 * 0.5f64.powf((now - w).as_secs_f64() / half_life))
            .sum()
    }

    proptest! {
        #[test]
        fn arbitrary_inputs_respect_hold_down_and_damping(
            steps in prop::collection::vec((0u64..4000, any::<bool>()), 1..400),
            hold_ms in 0u64..6000,
        ) {
            let t0 = Instant::now();
            let hold = Duration::from_millis(hold_ms);
            let half_life = 20.0;
            let config = DampingConfig { half_life: Duration::from_secs(20), ..damping() };
            let mut p = PrefixPolicy::new(hold, config);
            let mut now = t0;
            let mut was = false;
            let mut last_change: Option<Instant> = None;
            let mut withdraws: Vec<Instant> = Vec::new();
            let mut wanted_since: Option<Instant> = None;
            let mut suppressed_model = false;
            for (dt, want) in steps {
                now += Duration::from_millis(dt);
                wanted_since = if want { wanted_since.or(Some(now)) } else { None };
                let before = model_penalty(&withdraws, now, half_life);
                if suppressed_model && before < 750.0 {
                    suppressed_model = false;
                }
                let eff = p.update(now, want);
                prop_assert!(!eff || want, "announced while not wanted");
                if eff && !was {
                    if let Some(last) = last_change {
                        prop_assert!(now - last >= hold, "re-announced {:?} after a change", now - last);
                        prop_assert!(now - wanted_since.unwrap() >= hold, "want too short");
                    }
                    prop_assert!(!suppressed_model, "announced while suppressed, penalty {before}");
                    last_change = Some(now);
                }
                if !eff && was {
                    withdraws.push(now);
                    last_change = Some(now);
                    if model_penalty(&withdraws, now, half_life) > 3000.0 {
                        suppressed_model = true;
                    }
                }
                let pen = p.penalty(now);
                let model = model_penalty(&withdraws, now, half_life);
                prop_assert!((pen - model).abs() < 1e-6 * model.max(1.0), "penalty {pen} vs model {model}");
                prop_assert_eq!(p.suppressed(), suppressed_model);
                // Once the hold-down or suppression ends, the policy acts exactly then.
                if let Some(at) = p.next_event() {
                    prop_assert!(want && !eff && at >= now);
                }
                was = eff;
            }
        }
    }
}
