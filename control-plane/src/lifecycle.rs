//! The shadow lifecycle of one service as a pure state machine: cold, watching, warm-up,
//! shifting in steps, standby, role swap, and back to cold with a new shadow.
//!
//! [`step`] is a pure function of the state, one input and `now`: it returns the next state
//! and the effects to carry out (xDS pushes, provisioning, releases, events). Nothing here
//! does I/O or reads a clock, so every transition is unit-tested with made-up time, and the
//! state (serde) is what the control plane persists to resume after a restart.
//!
//! Weight changes are two-phase: the machine asks for a push ([`Action::Push`]) and waits for
//! its outcome ([`Input::Pushed`]); a NACK or a timeout fails the step and rolls back.

use serde::{Deserialize, Serialize};

/// How the lifecycle moves. Durations are milliseconds, so tests compress hours into seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// How long a new shadow stays cold (only a hard failure of the primary moves traffic).
    /// Default: 24 h.
    #[serde(default = "default_cold_ms")]
    pub cold_ms: u64,
    /// Percent of the traffic mirrored to the idle group: a cold shadow, or the old primary on
    /// standby (which stays warm this way). Default: 1.
    #[serde(default = "default_mirror_percent")]
    pub mirror_percent: u32,
    /// The shadow's share during warm-up, percent. Default: 5.
    #[serde(default = "default_warmup_percent")]
    pub warmup_percent: u32,
    /// How long warm-up lasts before shifting starts. Default: 5 min.
    #[serde(default = "default_warmup_ms")]
    pub warmup_ms: u64,
    /// The shadow's share at each shifting step, percent, rising, ending at 100. Default:
    /// 5, 10, 25, 50, 75, 100.
    #[serde(default = "default_steps")]
    pub steps: Vec<u32>,
    /// How long each step is held while the two groups are compared. Default: 2 min.
    #[serde(default = "default_step_dwell_ms")]
    pub step_dwell_ms: u64,
    /// How long the old primary stays on standby before the roles swap for good and it is
    /// released. Default: 30 min.
    #[serde(default = "default_standby_ms")]
    pub standby_ms: u64,
    /// After a rollback, how long triggers are ignored. Default: 15 min.
    #[serde(default = "default_cooldown_ms")]
    pub cooldown_ms: u64,
    /// How long a push may take to be ACKed before the step counts as failed. Default: 10 s.
    #[serde(default = "default_push_timeout_ms")]
    pub push_timeout_ms: u64,
}

fn default_cold_ms() -> u64 {
    24 * 3_600_000
}
fn default_mirror_percent() -> u32 {
    1
}
fn default_warmup_percent() -> u32 {
    5
}
fn default_warmup_ms() -> u64 {
    5 * 60_000
}
fn default_steps() -> Vec<u32> {
    vec![5, 10, 25, 50, 75, 100]
}
fn default_step_dwell_ms() -> u64 {
    2 * 60_000
}
fn default_standby_ms() -> u64 {
    30 * 60_000
}
fn default_cooldown_ms() -> u64 {
    15 * 60_000
}
fn default_push_timeout_ms() -> u64 {
    10_000
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            cold_ms: default_cold_ms(),
            mirror_percent: default_mirror_percent(),
            warmup_percent: default_warmup_percent(),
            warmup_ms: default_warmup_ms(),
            steps: default_steps(),
            step_dwell_ms: default_step_dwell_ms(),
            standby_ms: default_standby_ms(),
            cooldown_ms: default_cooldown_ms(),
            push_timeout_ms: default_push_timeout_ms(),
        }
    }
}

impl Policy {
    /// Checks the policy; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.mirror_percent > 100 {
            return Err(format!(
                "mirror_percent: {} is above 100",
                self.mirror_percent
            ));
        }
        if self.warmup_percent == 0 || self.warmup_percent >= 100 {
            return Err(format!(
                "warmup_percent: {} is not between 1 and 99",
                self.warmup_percent
            ));
        }
        if self.steps.last() != Some(&100) {
            return Err("steps: the last step must be 100".into());
        }
        if self.steps.windows(2).any(|w| w[0] >= w[1]) || self.steps.first() == Some(&0) {
            return Err("steps: must rise strictly from above 0 to 100".into());
        }
        for (name, v) in [
            ("step_dwell_ms", self.step_dwell_ms),
            ("push_timeout_ms", self.push_timeout_ms),
        ] {
            if v == 0 {
                return Err(format!("{name}: must be above 0"));
            }
        }
        Ok(())
    }
}

/// Where a service is in its lifecycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// The shadow learns from mirrored traffic; the primary takes everything.
    Cold {
        /// When the phase began.
        since_ms: u64,
    },
    /// Ready to migrate when the model predicts trouble.
    Watching {
        /// When the phase began.
        since_ms: u64,
        /// Triggers before this are ignored (after a rollback).
        cooldown_until_ms: u64,
    },
    /// A small share goes to the shadow, which learns from live load.
    WarmUp {
        /// When the phase began.
        since_ms: u64,
    },
    /// The shadow's share rises step by step.
    Shifting {
        /// Index into [`Policy::steps`].
        step: usize,
        /// When this step's weights were applied.
        since_ms: u64,
    },
    /// The shadow takes all traffic; the old primary is kept warm and configured.
    Standby {
        /// When the phase began.
        since_ms: u64,
    },
}

/// What the control plane should do (the machine's effects).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Push weights (percent to the shadow; the rest to the primary) and the mirror share;
    /// answer with [`Input::Pushed`] carrying `id`. Sessions stick to their group when the
    /// filter routes sticky (it has a session key); without one there is nothing to stick to.
    Push {
        /// Identifies the push in [`Input::Pushed`].
        id: u64,
        /// The shadow's share, percent.
        shadow_percent: u32,
        /// Percent of the primary's traffic mirrored to the shadow.
        mirror_percent: u32,
    },
    /// The shadow becomes the primary and the old primary is released; create a new shadow
    /// by mirroring the new primary.
    SwapRoles,
    /// Record a decision or a transition with its reasons.
    Event {
        /// What happened, e.g. `migration_started`, `rolled_back`.
        kind: String,
        /// Why, for people.
        reason: String,
    },
}

/// Something the machine reacts to.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Time passed.
    Tick,
    /// The model's verdict on the primary: migrate (with why) or stay.
    Trigger {
        /// Migrate now.
        migrate: bool,
        /// Reason, severity and expected time of breach, for people.
        reason: String,
    },
    /// The comparison of the shadow against the primary over the current step.
    Compared {
        /// The shadow is worse beyond the policy.
        shadow_worse: bool,
        /// The test and its figures, for people.
        reason: String,
    },
    /// The primary failed hard (not a prediction).
    PrimaryFailed {
        /// What failed.
        reason: String,
    },
    /// A push finished: ACKed by every node, or not.
    Pushed {
        /// The push's id.
        id: u64,
        /// Error (NACK message or timeout) if it failed.
        error: Option<String>,
    },
    /// The new shadow exists and serves (after [`Action::SwapRoles`]).
    ShadowReady,
    /// Operator: stop moving (weights stay).
    Pause,
    /// Operator: go on.
    Resume,
    /// Operator: back to the primary.
    Abort,
    /// Operator: skip ahead to the next step now.
    Promote,
}

/// The persisted state of one service's lifecycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The phase.
    pub phase: Phase,
    /// The shadow's share now in effect (ACKed), percent.
    pub shadow_percent: u32,
    /// Mirror share in effect (to the cold shadow, or on standby to the old primary), percent.
    pub mirror_percent: u32,
    /// The push awaiting its outcome: (id, shadow percent, deadline ms, phase to enter when
    /// it succeeds).
    pub pending: Option<Pending>,
    /// Operator pause.
    pub paused: bool,
    /// Waiting for a new shadow after a role swap.
    pub awaiting_shadow: bool,
    /// Next push id.
    pub next_id: u64,
}

/// A push in flight and where it leads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// Push id.
    pub id: u64,
    /// Shadow share it sets.
    pub shadow_percent: u32,
    /// Mirror share it sets.
    pub mirror_percent: u32,
    /// It fails if not ACKed by then.
    pub deadline_ms: u64,
    /// The phase entered once it is ACKed.
    pub then: Phase,
    /// The phase to return to if it fails (with the weights of before).
    pub on_failure: Phase,
}

impl State {
    /// A new service: its shadow starts cold, all traffic on the primary.
    pub fn new(now_ms: u64, policy: &Policy) -> State {
        State {
            phase: Phase::Cold { since_ms: now_ms },
            shadow_percent: 0,
            mirror_percent: policy.mirror_percent,
            pending: None,
            paused: false,
            awaiting_shadow: false,
            next_id: 1,
        }
    }
}

fn event(kind: &str, reason: impl Into<String>) -> Action {
    Action::Event {
        kind: kind.to_string(),
        reason: reason.into(),
    }
}

/// Asks for a push; the state enters `then` when it is ACKed, `on_failure` when not.
/// `to` is (shadow percent, mirror percent).
fn push(
    s: &mut State,
    out: &mut Vec<Action>,
    policy: &Policy,
    now_ms: u64,
    to: (u32, u32),
    then: Phase,
    on_failure: Phase,
) {
    let (shadow_percent, mirror_percent) = to;
    let id = s.next_id;
    s.next_id += 1;
    s.pending = Some(Pending {
        id,
        shadow_percent,
        mirror_percent,
        deadline_ms: now_ms + policy.push_timeout_ms,
        then,
        on_failure,
    });
    out.push(Action::Push {
        id,
        shadow_percent,
        mirror_percent,
    });
}

/// Back to the primary with everything: used by rollbacks and aborts.
fn roll_back(s: &mut State, out: &mut Vec<Action>, policy: &Policy, now_ms: u64, why: &str) {
    out.push(event("rolled_back", why));
    let watching = Phase::Watching {
        since_ms: now_ms,
        cooldown_until_ms: now_ms + policy.cooldown_ms,
    };
    // The push back to the primary must not fail into a half state: on failure it stays
    // watching and the next tick retries (see the pending-timeout branch).
    push(s, out, policy, now_ms, (0, 0), watching.clone(), watching);
}

/// One transition: the next state and what to do.
pub fn step(state: &State, input: Input, policy: &Policy, now_ms: u64) -> (State, Vec<Action>) {
    let mut s = state.clone();
    let mut out = Vec::new();

    // A push in flight settles first; nothing else moves until it does (except aborts).
    if let Some(p) = s.pending.clone() {
        match &input {
            Input::Pushed { id, error } if *id == p.id => {
                s.pending = None;
                match error {
                    None => {
                        s.shadow_percent = p.shadow_percent;
                        s.mirror_percent = p.mirror_percent;
                        s.phase = p.then;
                        out.push(event(
                            "weights_applied",
                            format!("shadow at {}%", p.shadow_percent),
                        ));
                    }
                    Some(e) => {
                        s.phase = p.on_failure.clone();
                        out.push(event("step_failed", format!("push refused: {e}")));
                        if s.shadow_percent > 0 {
                            roll_back(&mut s, &mut out, policy, now_ms, "a push failed");
                        }
                    }
                }
                return (s, out);
            }
            Input::Tick if now_ms >= p.deadline_ms => {
                s.pending = None;
                s.phase = p.on_failure.clone();
                out.push(event("step_failed", "push not ACKed in time"));
                if s.shadow_percent > 0 || p.shadow_percent == 0 {
                    // Either traffic is on the shadow (roll back) or the roll-back push itself
                    // timed out (retry it).
                    roll_back(
                        &mut s,
                        &mut out,
                        policy,
                        now_ms,
                        "a push was not ACKed in time",
                    );
                }
                return (s, out);
            }
            Input::Abort => {}
            _ => return (s, out),
        }
    }

    match input {
        Input::Pause => {
            s.paused = true;
            out.push(event("paused", "operator"));
        }
        Input::Resume => {
            s.paused = false;
            out.push(event("resumed", "operator"));
        }
        Input::Abort => {
            s.pending = None;
            s.paused = false;
            roll_back(&mut s, &mut out, policy, now_ms, "operator abort");
        }
        Input::PrimaryFailed { reason } => {
            // A hard failure moves traffic in any phase, cold included: a reactive failover,
            // reported as such.
            if s.shadow_percent < 100 {
                out.push(event("reactive_failover", reason));
                let here = s.phase.clone();
                push(
                    &mut s,
                    &mut out,
                    policy,
                    now_ms,
                    (100, policy.mirror_percent),
                    Phase::Standby { since_ms: now_ms },
                    here,
                );
            }
        }
        Input::ShadowReady => {
            if s.awaiting_shadow {
                s.awaiting_shadow = false;
                s.phase = Phase::Cold { since_ms: now_ms };
                out.push(event(
                    "shadow_created",
                    "a new shadow mirrors the new primary",
                ));
                push(
                    &mut s,
                    &mut out,
                    policy,
                    now_ms,
                    (0, policy.mirror_percent),
                    Phase::Cold { since_ms: now_ms },
                    Phase::Cold { since_ms: now_ms },
                );
            }
        }
        Input::Pushed { .. } => {} // stale outcome
        _ if s.paused || s.awaiting_shadow => {}
        Input::Trigger { migrate, reason } => {
            if let Phase::Watching { .. } = s.phase
                && migrate
            {
                start_migration(&mut s, &mut out, policy, now_ms, reason);
            }
        }
        Input::Compared {
            shadow_worse,
            reason,
        } => {
            if shadow_worse && matches!(s.phase, Phase::WarmUp { .. } | Phase::Shifting { .. }) {
                out.push(event("shadow_worse", reason));
                roll_back(
                    &mut s,
                    &mut out,
                    policy,
                    now_ms,
                    "the shadow compared worse",
                );
            }
        }
        Input::Promote => match s.phase {
            // Forced: cold ends by the operator's word, and a migration starts (a cooldown
            // still holds).
            Phase::Cold { .. } => {
                s.phase = Phase::Watching {
                    since_ms: now_ms,
                    cooldown_until_ms: now_ms,
                };
                start_migration(&mut s, &mut out, policy, now_ms, PROMOTED.into());
            }
            Phase::Watching { .. } => {
                start_migration(&mut s, &mut out, policy, now_ms, PROMOTED.into())
            }
            _ => advance(&mut s, &mut out, policy, now_ms),
        },
        Input::Tick => match s.phase {
            Phase::Cold { since_ms } if now_ms >= since_ms + policy.cold_ms => {
                s.phase = Phase::Watching {
                    since_ms: now_ms,
                    cooldown_until_ms: now_ms,
                };
                out.push(event("cold_done", "the shadow's cold period is over"));
            }
            Phase::WarmUp { since_ms } if now_ms >= since_ms + policy.warmup_ms => {
                advance(&mut s, &mut out, policy, now_ms)
            }
            Phase::Shifting { since_ms, .. } if now_ms >= since_ms + policy.step_dwell_ms => {
                advance(&mut s, &mut out, policy, now_ms)
            }
            Phase::Standby { since_ms } if now_ms >= since_ms + policy.standby_ms => {
                s.awaiting_shadow = true;
                out.push(event(
                    "roles_swapped",
                    "the shadow is the primary; the old primary is released",
                ));
                out.push(Action::SwapRoles);
            }
            _ => {}
        },
    }
    (s, out)
}

/// The reason a forced promotion gives.
const PROMOTED: &str = "operator forced a promotion";

/// From watching: warm-up begins, unless a rollback's cooldown still holds.
fn start_migration(
    s: &mut State,
    out: &mut Vec<Action>,
    policy: &Policy,
    now_ms: u64,
    reason: String,
) {
    let Phase::Watching {
        cooldown_until_ms, ..
    } = s.phase
    else {
        return;
    };
    if now_ms < cooldown_until_ms {
        out.push(event("trigger_ignored", format!("cooling down: {reason}")));
        return;
    }
    out.push(event("migration_started", reason));
    let here = s.phase.clone();
    push(
        s,
        out,
        policy,
        now_ms,
        (policy.warmup_percent, 0),
        Phase::WarmUp { since_ms: now_ms },
        here,
    );
}

/// The next step up from the current phase.
fn advance(s: &mut State, out: &mut Vec<Action>, policy: &Policy, now_ms: u64) {
    let next = match s.phase {
        Phase::WarmUp { .. } => Some(0),
        Phase::Shifting { step, .. } => Some(step + 1),
        _ => None,
    };
    let Some(next) = next else { return };
    let here = s.phase.clone();
    match policy.steps.get(next) {
        Some(&percent) if percent < 100 => push(
            s,
            out,
            policy,
            now_ms,
            (percent, 0),
            Phase::Shifting {
                step: next,
                since_ms: now_ms,
            },
            here,
        ),
        _ => {
            out.push(event(
                "cut_over",
                "the shadow takes all traffic; the primary is on standby",
            ));
            push(
                s,
                out,
                policy,
                now_ms,
                (100, policy.mirror_percent),
                Phase::Standby { since_ms: now_ms },
                here,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            cold_ms: 1000,
            warmup_ms: 100,
            step_dwell_ms: 100,
            standby_ms: 500,
            cooldown_ms: 300,
            push_timeout_ms: 50,
            ..Policy::default()
        }
    }

    /// Runs an input and ACKs the push it asks for, if any.
    fn run(s: &State, input: Input, now: u64) -> (State, Vec<Action>) {
        let p = policy();
        let (mut s, mut out) = step(s, input, &p, now);
        while let Some(Action::Push { id, .. }) = out
            .iter()
            .rev()
            .find(|a| matches!(a, Action::Push { .. }))
            .cloned()
        {
            let (s2, more) = step(&s, Input::Pushed { id, error: None }, &p, now);
            s = s2;
            let again = more.iter().any(|a| matches!(a, Action::Push { .. }));
            out.extend(
                more.into_iter()
                    .filter(|a| !matches!(a, Action::Push { .. })),
            );
            if !again {
                break;
            }
        }
        (s, out)
    }

    fn kinds(out: &[Action]) -> Vec<String> {
        out.iter()
            .filter_map(|a| match a {
                Action::Event { kind, .. } => Some(kind.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn default_policy_checks_and_bad_ones_name_the_field() {
        assert_eq!(Policy::default().check(), Ok(()));
        let bad = Policy {
            steps: vec![5, 50],
            ..Policy::default()
        };
        assert!(bad.check().unwrap_err().starts_with("steps:"));
        let bad = Policy {
            steps: vec![10, 5, 100],
            ..Policy::default()
        };
        assert!(bad.check().unwrap_err().starts_with("steps:"));
        let bad = Policy {
            warmup_percent: 0,
            ..Policy::default()
        };
        assert!(bad.check().unwrap_err().starts_with("warmup_percent:"));
    }

    #[test]
    fn full_lifecycle_from_cold_to_a_new_shadow() {
        let p = policy();
        let s = State::new(0, &p);
        // Cold: triggers are ignored, ticks before the end change nothing.
        let (s, out) = run(
            &s,
            Input::Trigger {
                migrate: true,
                reason: "p99 rising".into(),
            },
            10,
        );
        assert!(out.is_empty() && matches!(s.phase, Phase::Cold { .. }));
        let (s, _) = run(&s, Input::Tick, 999);
        assert!(matches!(s.phase, Phase::Cold { .. }));
        let (s, out) = run(&s, Input::Tick, 1000);
        assert_eq!(kinds(&out), ["cold_done"]);
        // Predicted trouble: warm-up at 5%.
        let (s, out) = run(
            &s,
            Input::Trigger {
                migrate: true,
                reason: "p99 breach in 10 min".into(),
            },
            1100,
        );
        assert_eq!(kinds(&out), ["migration_started", "weights_applied"]);
        assert_eq!((s.shadow_percent, s.mirror_percent), (5, 0));
        assert!(matches!(s.phase, Phase::WarmUp { .. }));
        // Steps 5, 10, 25, 50, 75, each after its dwell, then cut-over at 100.
        let mut s = s;
        let mut now = 1100;
        let mut seen = vec![];
        for _ in 0..6 {
            now += 100;
            let (s2, _) = run(&s, Input::Tick, now);
            s = s2;
            seen.push(s.shadow_percent);
        }
        assert_eq!(seen, [5, 10, 25, 50, 75, 100]);
        assert!(matches!(s.phase, Phase::Standby { .. }));
        // On standby the old primary is kept warm by the mirrored share.
        assert_eq!(s.mirror_percent, 1);
        // Standby, then the roles swap and a new shadow is asked for.
        let (s, out) = run(&s, Input::Tick, now + 499);
        assert!(out.is_empty());
        let (s, out) = run(&s, Input::Tick, now + 500);
        assert!(out.contains(&Action::SwapRoles));
        assert!(s.awaiting_shadow);
        // The new shadow: cold again, all traffic on the (new) primary, mirroring on.
        let (s, out) = run(&s, Input::ShadowReady, now + 600);
        assert_eq!(kinds(&out), ["shadow_created", "weights_applied"]);
        assert!(matches!(s.phase, Phase::Cold { .. }));
        assert_eq!((s.shadow_percent, s.mirror_percent), (0, 1));
    }

    fn watching_at(shadow: u32) -> State {
        let p = policy();
        let s = State::new(0, &p);
        let (s, _) = run(&s, Input::Tick, 1000);
        let (mut s, _) = run(
            &s,
            Input::Trigger {
                migrate: true,
                reason: "x".into(),
            },
            1000,
        );
        let mut now = 1000;
        while s.shadow_percent < shadow {
            now += 100;
            s = run(&s, Input::Tick, now).0;
        }
        s
    }

    #[test]
    fn a_worse_shadow_rolls_back_and_cools_down() {
        let s = watching_at(25);
        let (s, out) = run(
            &s,
            Input::Compared {
                shadow_worse: true,
                reason: "p99 1.4x, Mann-Whitney p=0.001".into(),
            },
            2000,
        );
        assert_eq!(
            kinds(&out),
            ["shadow_worse", "rolled_back", "weights_applied"]
        );
        assert_eq!(s.shadow_percent, 0);
        let Phase::Watching {
            cooldown_until_ms, ..
        } = s.phase
        else {
            panic!("{s:?}")
        };
        assert_eq!(cooldown_until_ms, 2300);
        // Within the cooldown a trigger is only noted.
        let (s, out) = run(
            &s,
            Input::Trigger {
                migrate: true,
                reason: "again".into(),
            },
            2100,
        );
        assert_eq!(kinds(&out), ["trigger_ignored"]);
        let (_, out) = run(
            &s,
            Input::Trigger {
                migrate: true,
                reason: "again".into(),
            },
            2300,
        );
        assert_eq!(kinds(&out)[0], "migration_started");
    }

    #[test]
    fn a_nacked_step_fails_and_the_weights_go_back() {
        let p = policy();
        let s = watching_at(10);
        // The next step's push is NACKed.
        let (s, out) = step(&s, Input::Tick, &p, 5000);
        let Some(Action::Push {
            id,
            shadow_percent: 25,
            ..
        }) = out.last().cloned()
        else {
            panic!("{out:?}")
        };
        let (s, out) = step(
            &s,
            Input::Pushed {
                id,
                error: Some("NACK: bad route".into()),
            },
            &p,
            5001,
        );
        assert_eq!(kinds(&out), ["step_failed", "rolled_back"]);
        assert!(matches!(
            out.last(),
            Some(Action::Push {
                shadow_percent: 0,
                ..
            })
        ));
        // Still at 10% until the roll-back push is ACKed.
        assert_eq!(s.shadow_percent, 10);
        let Some(Action::Push { id, .. }) = out.last().cloned() else {
            unreachable!()
        };
        let (s, _) = step(&s, Input::Pushed { id, error: None }, &p, 5002);
        assert_eq!(s.shadow_percent, 0);
        assert!(matches!(s.phase, Phase::Watching { .. }));
    }

    #[test]
    fn a_push_that_is_never_acked_times_out_and_rolls_back() {
        let p = policy();
        let s = watching_at(10);
        let (s, _) = step(&s, Input::Tick, &p, 5000);
        // Other inputs wait for the push.
        let (s, out) = step(
            &s,
            Input::Compared {
                shadow_worse: true,
                reason: "x".into(),
            },
            &p,
            5010,
        );
        assert!(out.is_empty());
        let (s, out) = step(&s, Input::Tick, &p, 5050);
        assert_eq!(kinds(&out), ["step_failed", "rolled_back"]);
        assert!(s.pending.is_some());
    }

    #[test]
    fn promote_from_cold_or_watching_starts_a_migration_unless_cooling_down() {
        let p = policy();
        let cold = State::new(0, &p);
        let (s, out) = step(&cold, Input::Promote, &p, 10);
        assert_eq!(kinds(&out), ["migration_started"]);
        assert!(matches!(
            s.pending,
            Some(Pending {
                shadow_percent: 5,
                ..
            })
        ));
        let cooling = State {
            phase: Phase::Watching {
                since_ms: 0,
                cooldown_until_ms: 100,
            },
            ..cold
        };
        let (s, out) = step(&cooling, Input::Promote, &p, 10);
        assert_eq!(kinds(&out), ["trigger_ignored"]);
        assert!(s.pending.is_none());
    }

    #[test]
    fn pause_holds_resume_goes_on_abort_returns_promote_skips() {
        let p = policy();
        let s = watching_at(5);
        let (s, _) = run(&s, Input::Pause, 3000);
        let (s, out) = run(&s, Input::Tick, 9000);
        assert!(out.is_empty());
        assert_eq!(s.shadow_percent, 5);
        let (s, _) = run(&s, Input::Resume, 9000);
        // From warm-up, promotion enters the first step (5% again), then the next (10%).
        let (s, _) = run(&s, Input::Promote, 9001);
        assert!(matches!(s.phase, Phase::Shifting { step: 0, .. }), "{s:?}");
        let (s, _) = run(&s, Input::Promote, 9001);
        assert_eq!(s.shadow_percent, 10);
        let (s, out) = run(&s, Input::Abort, 9002);
        assert_eq!(kinds(&out)[0], "rolled_back");
        assert_eq!(s.shadow_percent, 0);
        assert_eq!(s.pending, None);
        let _ = p;
    }

    #[test]
    fn a_hard_failure_fails_over_even_when_cold() {
        let p = policy();
        let s = State::new(0, &p);
        let (s, out) = run(
            &s,
            Input::PrimaryFailed {
                reason: "every instance refuses connections".into(),
            },
            10,
        );
        assert_eq!(kinds(&out), ["reactive_failover", "weights_applied"]);
        assert_eq!(s.shadow_percent, 100);
        assert!(matches!(s.phase, Phase::Standby { .. }));
    }

    #[test]
    fn state_round_trips_through_json() {
        let s = watching_at(25);
        let json = serde_json::to_string(&s).unwrap();
        let back: State = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert!(json.contains("\"phase\":\"shifting\""), "{json}");
    }
}
