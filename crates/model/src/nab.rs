//! The Numenta Anomaly Benchmark's scoring rules, as pure functions over row indices.
//!
//! A detector emits a score in [0, 1] per row; one threshold for the whole corpus turns scores
//! into detections, and the benchmark reports the best total over all thresholds
//! ([`sweep`]). Written here because no maintained Rust crate implements NAB; the rules are
//! those of `shared/data/nab/README.md` (NAB's `sweeper.py`):
//!
//! - the first `min(floor(0.15 rows), 750)` rows are probationary and count for nothing;
//! - in a window only the earliest detection counts, worth `A_tp * sigma(p) / sigma(-1)` with
//!   `p = -(right - i + 1) / width` and `sigma(p) = 2 / (1 + exp(5 p)) - 1`;
//! - a window without a detection costs `A_fn`;
//! - a detection outside every window costs `A_fp * sigma(p)` with
//!   `p = (i - right_prev) / (width_prev - 1)` (sigma is -1 beyond p > 3), or `A_fp` when no
//!   window came before;
//! - normalised = `100 (raw - null) / (perfect - null)`, null = `-A_fn * windows`, perfect =
//!   `A_tp * windows`.

use crate::Time;

/// Weights of one scoring profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// The profile's name in NAB's reports.
    pub name: &'static str,
    /// Reward of a detection at a window's left edge.
    pub a_tp: f64,
    /// Cost of a false positive far from any window.
    pub a_fp: f64,
    /// Cost of a window with no detection.
    pub a_fn: f64,
}

/// NAB's standard profile.
pub const STANDARD: Profile = Profile {
    name: "standard",
    a_tp: 1.0,
    a_fp: 0.11,
    a_fn: 1.0,
};
/// NAB's profile that punishes false positives twice as hard.
pub const REWARD_LOW_FP: Profile = Profile {
    name: "reward_low_FP_rate",
    a_tp: 1.0,
    a_fp: 0.22,
    a_fn: 1.0,
};
/// NAB's profile that punishes missed windows twice as hard.
pub const REWARD_LOW_FN: Profile = Profile {
    name: "reward_low_FN_rate",
    a_tp: 1.0,
    a_fp: 0.11,
    a_fn: 2.0,
};
/// The three profiles, in NAB's order.
pub const PROFILES: [Profile; 3] = [STANDARD, REWARD_LOW_FP, REWARD_LOW_FN];

/// A label window: rows `start..=end` (indices into the file's rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First row inside the window.
    pub start: usize,
    /// Last row inside the window.
    pub end: usize,
}

impl Window {
    /// Rows in the window.
    pub fn width(self) -> usize {
        self.end - self.start + 1
    }
}

/// The window of rows whose times lie in `[start, end]`, for sorted `times`; `None` when no
/// row does.
pub fn window_rows(times: &[Time], start: Time, end: Time) -> Option<Window> {
    let first = times.partition_point(|&t| t < start);
    let after = times.partition_point(|&t| t <= end);
    (first < after).then(|| Window {
        start: first,
        end: after - 1,
    })
}

/// Rows at the start of a file that count for nothing: `min(floor(0.15 rows), 750)`.
pub fn probation(rows: usize) -> usize {
    (rows * 15 / 100).min(750)
}

/// NAB's scaled sigmoid: `2 / (1 + exp(5 p)) - 1`, and -1 beyond `p > 3`.
pub fn sigmoid(p: f64) -> f64 {
    if p > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * p).exp()) - 1.0
    }
}

/// What a detection at each row would be worth, before any threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct RowWeights {
    /// Per row: `Some(window)` inside window number `window`, else `None`.
    window_of: Vec<Option<usize>>,
    /// Per row: the reward (inside a window) or the (negative) cost of a detection there;
    /// 0 in the probationary period.
    weight: Vec<f64>,
    /// Whether the row is probationary.
    probationary: Vec<bool>,
    windows: usize,
}

impl RowWeights {
    /// The weights of a file of `rows` rows with sorted, disjoint `windows` under `profile`.
    pub fn new(rows: usize, windows: &[Window], profile: Profile) -> Self {
        let prob = probation(rows);
        let max_tp = sigmoid(-1.0);
        let mut window_of = vec![None; rows];
        let mut weight = vec![0.0; rows];
        let mut next = 0;
        let mut prev: Option<Window> = None;
        for i in 0..rows {
            while next < windows.len() && windows[next].end < i {
                prev = Some(windows[next]);
                next += 1;
            }
            let inside = windows
                .get(next)
                .filter(|w| w.start <= i && i <= w.end)
                .copied();
            weight[i] = match inside {
                Some(w) => {
                    window_of[i] = Some(next);
                    let p = -((w.end - i + 1) as f64) / w.width() as f64;
                    profile.a_tp * sigmoid(p) / max_tp
                }
                None => match prev {
                    None => -profile.a_fp,
                    Some(w) => {
                        let denom = (w.width() as f64 - 1.0).max(1.0);
                        profile.a_fp * sigmoid((i - w.end) as f64 / denom)
                    }
                },
            };
        }
        let probationary = (0..rows).map(|i| i < prob).collect();
        RowWeights {
            window_of,
            weight,
            probationary,
            windows: windows.len(),
        }
    }
}

/// The outcome of one file (or a corpus) at one threshold.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Tally {
    /// The raw score: rewards minus costs.
    pub raw: f64,
    /// Windows with a detection.
    pub tp: usize,
    /// Detections outside every window (after the probationary period).
    pub fp: usize,
    /// Windows without a detection.
    pub fn_: usize,
}

/// Scores one file's `detections` (one flag per row) against `windows` under `profile`.
pub fn score(detections: &[bool], windows: &[Window], profile: Profile) -> Tally {
    let w = RowWeights::new(detections.len(), windows, profile);
    let mut best: Vec<Option<f64>> = vec![None; windows.len()];
    let mut tally = Tally::default();
    for (i, &d) in detections.iter().enumerate() {
        if !d || w.probationary[i] {
            continue;
        }
        match w.window_of[i] {
            Some(k) => {
                // the earliest detection is the best: the weight falls through the window
                if best[k].is_none() {
                    best[k] = Some(w.weight[i]);
                }
            }
            None => {
                tally.fp += 1;
                tally.raw += w.weight[i];
            }
        }
    }
    for b in best {
        match b {
            Some(v) => {
                tally.tp += 1;
                tally.raw += v;
            }
            None => {
                tally.fn_ += 1;
                tally.raw -= profile.a_fn;
            }
        }
    }
    tally
}

/// `100 (raw - null) / (perfect - null)` for a corpus with `windows` windows in all; 0 when
/// the corpus has no window.
pub fn normalise(raw: f64, windows: usize, profile: Profile) -> f64 {
    let null = -profile.a_fn * windows as f64;
    let perfect = profile.a_tp * windows as f64;
    if perfect - null <= 0.0 {
        0.0
    } else {
        100.0 * (raw - null) / (perfect - null)
    }
}

/// One file for [`sweep`]: its scores (one per row) and windows.
#[derive(Debug, Clone, Copy)]
pub struct File<'a> {
    /// The detector's score per row, in [0, 1].
    pub scores: &'a [f64],
    /// The label windows, sorted and disjoint.
    pub windows: &'a [Window],
}

/// The best corpus-wide threshold and what it scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sweep {
    /// Rows scoring at least this are detections; above 1 means none at all.
    pub threshold: f64,
    /// The corpus tally at that threshold.
    pub tally: Tally,
    /// The normalised score (see [`normalise`]).
    pub normalised: f64,
}

/// Tries every threshold (each distinct score, and one above all of them) over the whole
/// corpus at once and returns the best, as NAB's optimiser does; ties go to the higher
/// threshold. O(rows log rows).
pub fn sweep(files: &[File<'_>], profile: Profile) -> Sweep {
    struct Row {
        score: f64,
        file: usize,
        index: usize,
    }
    let weights: Vec<RowWeights> = files
        .iter()
        .map(|f| RowWeights::new(f.scores.len(), f.windows, profile))
        .collect();
    let windows: usize = weights.iter().map(|w| w.windows).sum();
    let mut rows: Vec<Row> = Vec::new();
    for (k, (f, w)) in files.iter().zip(&weights).enumerate() {
        for (i, &s) in f.scores.iter().enumerate() {
            if !w.probationary[i] {
                rows.push(Row {
                    score: s,
                    file: k,
                    index: i,
                });
            }
        }
    }
    rows.sort_by(|a, b| b.score.total_cmp(&a.score));
    // per file and window: the earliest detected row so far
    let mut earliest: Vec<Vec<Option<usize>>> =
        weights.iter().map(|w| vec![None; w.windows]).collect();
    let mut tally = Tally {
        raw: -profile.a_fn * windows as f64,
        tp: 0,
        fp: 0,
        fn_: windows,
    };
    let mut best = Sweep {
        threshold: 1.0 + f64::EPSILON.max(rows.first().map_or(0.0, |r| r.score) - 1.0),
        tally,
        normalised: normalise(tally.raw, windows, profile),
    };
    let mut i = 0;
    while i < rows.len() {
        let threshold = rows[i].score;
        while i < rows.len() && rows[i].score == threshold {
            let r = &rows[i];
            let w = &weights[r.file];
            match w.window_of[r.index] {
                None => {
                    tally.fp += 1;
                    tally.raw += w.weight[r.index];
                }
                Some(win) => match earliest[r.file][win] {
                    None => {
                        tally.tp += 1;
                        tally.fn_ -= 1;
                        tally.raw += profile.a_fn + w.weight[r.index];
                        earliest[r.file][win] = Some(r.index);
                    }
                    Some(e) if r.index < e => {
                        tally.raw += w.weight[r.index] - w.weight[e];
                        earliest[r.file][win] = Some(r.index);
                    }
                    Some(_) => {}
                },
            }
            i += 1;
        }
        if tally.raw > best.tally.raw {
            best = Sweep {
                threshold,
                tally,
                normalised: normalise(tally.raw, windows, profile),
            };
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Window = Window { start: 50, end: 59 };

    fn at(rows: usize, hits: &[usize]) -> Vec<bool> {
        let mut d = vec![false; rows];
        for &h in hits {
            d[h] = true;
        }
        d
    }

    #[test]
    fn probation_is_fifteen_percent_up_to_750() {
        assert_eq!(probation(100), 15);
        assert_eq!(probation(4032), 604);
        assert_eq!(probation(10_000), 750);
        assert_eq!(probation(6), 0);
    }

    #[test]
    fn sigmoid_edges() {
        assert!((sigmoid(-1.0) - 0.986_614_298).abs() < 1e-9);
        assert_eq!(sigmoid(0.0), 0.0);
        assert_eq!(sigmoid(3.5), -1.0);
        assert!(sigmoid(3.0) > -1.0);
    }

    #[test]
    fn left_edge_scores_a_tp_and_only_the_earliest_counts() {
        // 100 rows: probation 15; window 50..=59 (width 10)
        let t = score(&at(100, &[50, 55]), &[W], STANDARD);
        assert_eq!((t.tp, t.fp, t.fn_), (1, 0, 0));
        assert!((t.raw - 1.0).abs() < 1e-12);
        // at i = 55: p = -(59 - 55 + 1) / 10 = -0.5; sigma = 2 / (1 + e^-2.5) - 1
        let expected = (2.0 / (1.0 + (-2.5f64).exp()) - 1.0) / sigmoid(-1.0);
        let t = score(&at(100, &[55]), &[W], STANDARD);
        assert!((t.raw - expected).abs() < 1e-12, "{}", t.raw);
        // the right edge is worth almost nothing: p = -1 / 10
        let t = score(&at(100, &[59]), &[W], STANDARD);
        let edge = (2.0 / (1.0 + (-0.5f64).exp()) - 1.0) / sigmoid(-1.0);
        assert!((t.raw - edge).abs() < 1e-12 && t.raw < 0.25);
    }

    #[test]
    fn misses_and_false_positives() {
        // no detection: -A_fn per window
        let t = score(&at(100, &[]), &[W], REWARD_LOW_FN);
        assert_eq!((t.tp, t.fn_), (0, 1));
        assert_eq!(t.raw, -2.0);
        // before any window: -A_fp; in probation: nothing
        let t = score(&at(100, &[5, 20]), &[W], STANDARD);
        assert_eq!(t.fp, 1);
        assert!((t.raw - (-0.11 - 1.0)).abs() < 1e-12);
        // after the window: A_fp * sigma((i - 59) / 9); at i = 68, p = 1
        let t = score(&at(100, &[50, 68]), &[W], REWARD_LOW_FP);
        let fp = 0.22 * (2.0 / (1.0 + 5f64.exp()) - 1.0);
        assert!((t.raw - (1.0 + fp)).abs() < 1e-12, "{}", t.raw);
        // far after the window (p > 3): the full -A_fp
        let t = score(&at(100, &[50, 95]), &[W], STANDARD);
        assert!((t.raw - (1.0 - 0.11)).abs() < 1e-12);
    }

    #[test]
    fn normalised_null_is_zero_and_perfect_is_hundred() {
        assert_eq!(normalise(-3.0, 3, STANDARD), 0.0);
        assert_eq!(normalise(3.0, 3, STANDARD), 100.0);
        assert_eq!(normalise(-6.0, 3, REWARD_LOW_FN), 0.0);
        assert!((normalise(0.0, 3, REWARD_LOW_FN) - 100.0 * 6.0 / 9.0).abs() < 1e-12);
    }

    #[test]
    fn window_rows_from_times() {
        let times: Vec<Time> = (0..10).map(|i| i * 300).collect();
        assert_eq!(
            window_rows(&times, 600, 1500),
            Some(Window { start: 2, end: 5 })
        );
        assert_eq!(
            window_rows(&times, 650, 1499),
            Some(Window { start: 3, end: 4 })
        );
        assert_eq!(window_rows(&times, 5000, 6000), None);
    }

    #[test]
    fn sweep_matches_scoring_each_threshold() {
        let a: Vec<f64> = (0..100)
            .map(|i| match i {
                30 => 0.9,
                52 => 0.8,
                57 => 0.95,
                80 => 0.6,
                _ => 0.1,
            })
            .collect();
        let b: Vec<f64> = (0..100).map(|i| if i == 40 { 0.7 } else { 0.0 }).collect();
        let files = [
            File {
                scores: &a,
                windows: &[W],
            },
            File {
                scores: &b,
                windows: &[],
            },
        ];
        for profile in PROFILES {
            let s = sweep(&files, profile);
            let mut thresholds: Vec<f64> = a.iter().chain(&b).copied().collect();
            thresholds.push(2.0);
            let brute = thresholds
                .iter()
                .map(|&th| {
                    let ta = score(
                        &a.iter().map(|&s| s >= th).collect::<Vec<_>>(),
                        &[W],
                        profile,
                    );
                    let tb = score(
                        &b.iter().map(|&s| s >= th).collect::<Vec<_>>(),
                        &[],
                        profile,
                    );
                    ta.raw + tb.raw
                })
                .fold(f64::NEG_INFINITY, f64::max);
            assert!((s.tally.raw - brute).abs() < 1e-12, "{profile:?}");
        }
        // standard: 0.8 catches 52 (worth more than 57 alone) and pays for 30 and nothing else
        let s = sweep(&files, STANDARD);
        assert_eq!(s.threshold, 0.8);
        assert_eq!((s.tally.tp, s.tally.fp, s.tally.fn_), (1, 1, 0));
    }
}
