//! `shadowplane detect`: streams a `timestamp,value` CSV through the anomaly detector and writes
//! `timestamp,value,anomaly_score` per row. Each score uses only its row and the rows before
//! it; the parameters are the library's defaults, the same for every file.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use shadowplane_model::{Detector, DetectorParams};

/// The timestamp layout of the NAB files (`2014-02-14 14:30:00`, optional fraction).
const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.f";

/// Bad input: the file is fine to read but a row is not (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}: {reason}")]
pub struct BadRow {
    path: String,
    line: u64,
    reason: String,
}

/// Runs the detector over `input` and writes `output`. The output is written beside it first
/// and renamed into place at the end, so a bad row leaves no partial file behind.
pub fn run(input: &Path, output: &Path) -> anyhow::Result<usize> {
    let tmp = partial_path(output);
    let result = stream(input, &tmp);
    match result {
        Ok(rows) => {
            fs::rename(&tmp, output).with_context(|| {
                format!("cannot move {} to {}", tmp.display(), output.display())
            })?;
            Ok(rows)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    output.with_file_name(name)
}

fn stream(input: &Path, output: &Path) -> anyhow::Result<usize> {
    let file = File::open(input).with_context(|| format!("cannot open {}", input.display()))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(BufReader::new(file));
    let out =
        File::create(output).with_context(|| format!("cannot create {}", output.display()))?;
    let mut writer = csv::Writer::from_writer(BufWriter::new(out));
    let path = input.display().to_string();
    let bad = |line: u64, reason: String| BadRow {
        path: path.clone(),
        line,
        reason,
    };
    let headers = reader
        .headers()
        .with_context(|| format!("cannot read the header of {path}"))?
        .clone();
    let expected = ["timestamp", "value"];
    if headers.len() != 2 || headers.iter().zip(expected).any(|(h, e)| h != e) {
        return Err(bad(
            1,
            format!(
                "the header must be `timestamp,value`, got `{}`",
                headers.iter().collect::<Vec<_>>().join(",")
            ),
        )
        .into());
    }
    writer.write_record(["timestamp", "value", "anomaly_score"])?;
    let mut detector = Detector::new(DetectorParams::default().check()?, 0);
    let mut record = csv::StringRecord::new();
    let mut rows = 0;
    let mut previous: Option<i64> = None;
    loop {
        let more = reader
            .read_record(&mut record)
            .map_err(|e| bad(e.position().map_or(0, csv::Position::line), e.to_string()))?;
        if !more {
            break;
        }
        let line = record.position().map_or(0, csv::Position::line);
        if record.len() != 2 {
            return Err(bad(line, format!("expected 2 fields, got {}", record.len())).into());
        }
        let (stamp, raw) = (&record[0], &record[1]);
        let time = chrono::NaiveDateTime::parse_from_str(stamp, TIME_FORMAT)
            .map_err(|e| bad(line, format!("timestamp `{stamp}`: {e}")))?
            .and_utc()
            .timestamp();
        if let Some(p) = previous
            && time < p
        {
            return Err(bad(
                line,
                format!("timestamp `{stamp}` is before the previous row's"),
            )
            .into());
        }
        previous = Some(time);
        let value: f64 = raw
            .parse()
            .map_err(|_| bad(line, format!("value `{raw}` is not a number")))?;
        if !value.is_finite() {
            return Err(bad(line, format!("value `{raw}` is not finite")).into());
        }
        let verdict = detector
            .update(time, value, &[])
            .map_err(|e| bad(line, e.to_string()))?;
        writer.write_record([stamp, raw, &verdict.score.to_string()])?;
        rows += 1;
    }
    if rows == 0 {
        bail!(bad(2, "no rows after the header".into()));
    }
    let mut inner = writer
        .into_inner()
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", output.display(), e.error()))?;
    inner
        .flush()
        .with_context(|| format!("cannot write {}", output.display()))?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect(input: &str) -> (anyhow::Result<usize>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("in.csv"), input).unwrap();
        let r = run(&dir.path().join("in.csv"), &dir.path().join("out.csv"));
        (r, dir)
    }

    fn series(rows: usize, spike_at: Option<usize>) -> String {
        let mut s = String::from("timestamp,value\n");
        let start = chrono::NaiveDate::from_ymd_opt(2014, 4, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap();
        for i in 0..rows {
            let t = start + chrono::Duration::minutes(5 * i as i64);
            let phase = (i % 288) as f64 / 288.0 * std::f64::consts::TAU;
            let noise = ((i * 7919) % 17) as f64 / 17.0;
            let v =
                50.0 + 20.0 * phase.sin() + noise + if Some(i) == spike_at { 60.0 } else { 0.0 };
            s.push_str(&format!("{},{v}\n", t.format("%Y-%m-%d %H:%M:%S")));
        }
        s
    }

    #[test]
    fn scores_every_row_and_the_spike_highest() {
        let (r, dir) = detect(&series(1500, Some(1200)));
        assert_eq!(r.unwrap(), 1500);
        let out = fs::read_to_string(dir.path().join("out.csv")).unwrap();
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("timestamp,value,anomaly_score"));
        let scores: Vec<f64> = lines
            .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(scores.len(), 1500);
        assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
        let top = scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(
            top, 1200,
            "top {} at {top}, spike {}",
            scores[top], scores[1200]
        );
        assert!(!dir.path().join("out.csv.partial").exists());
    }

    #[test]
    fn a_prefix_scores_the_same_as_the_whole_file() {
        // streaming: a row's score never depends on the rows after it
        let full = series(1300, Some(1250));
        let head: String = full.lines().take(1001).map(|l| format!("{l}\n")).collect();
        let (_, a) = detect(&full);
        let (_, b) = detect(&head);
        let a = fs::read_to_string(a.path().join("out.csv")).unwrap();
        let b = fs::read_to_string(b.path().join("out.csv")).unwrap();
        assert!(a.starts_with(&b));
    }

    #[test]
    fn bad_rows_name_their_line() {
        let cases = [
            (
                "timestamp,value\n2014-04-01 00:00:00,1\n2014-04-01 00:05:00,NaN\n",
                ":3: value `NaN` is not finite",
            ),
            (
                "timestamp,value\n2014-04-01 00:00:00,inf\n",
                ":2: value `inf` is not finite",
            ),
            (
                "timestamp,value\n2014-04-01 00:00:00,1\n2014-04-01 00:05,2\n",
                ":3: timestamp `2014-04-01 00:05`",
            ),
            (
                "timestamp,value\n2014-04-01 00:05:00,1\n2014-04-01 00:00:00,2\n",
                ":3: timestamp `2014-04-01 00:00:00` is before",
            ),
            (
                "timestamp,value\n2014-04-01 00:00:00,x\n",
                ":2: value `x` is not a number",
            ),
            ("time,value\n", ":1: the header must be"),
        ];
        for (input, want) in cases {
            let (r, dir) = detect(input);
            let err = r.unwrap_err();
            assert!(err.downcast_ref::<BadRow>().is_some(), "{err:#}");
            assert!(err.to_string().contains(want), "{err} lacks {want}");
            assert!(!dir.path().join("out.csv").exists());
            assert!(!dir.path().join("out.csv.partial").exists());
        }
    }

    #[test]
    fn repeated_timestamps_are_accepted() {
        // a clock change repeats a timestamp in the NAB files
        let input = "timestamp,value\n2014-03-09 01:59:00,1\n2014-03-09 03:00:00,1\n2014-03-09 03:00:00,2\n";
        assert_eq!(detect(input).0.unwrap(), 3);
    }
}
