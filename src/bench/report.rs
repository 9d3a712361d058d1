//! One shape for what a benchmark measured, and the three ways it is shown: a markdown table
//! (what the README quotes), JSON (what a script or a later plot reads) and an SVG chart (what
//! a person reads at a glance).
//!
//! A [`Report`] names its subjects once (the columns: peapod's VM, crun, QEMU microvm, a veth
//! peer, ...) and holds [`Metric`]s (the rows), each with one [`Cell`] per subject: the raw
//! [`Samples`] of its runs, or why it did not run. A subject that cannot run on this machine
//! keeps its column and says why, so a table from a laptop and one from a KVM host line up.
//! A metric may name a baseline subject; the table then shows each other subject's median
//! over the baseline's, as the benches always have.
//!
//! [`interleave`] runs the subjects A B A B ... so that a slow drift of the machine (thermal,
//! page cache, a noisy neighbour) lands on all of them alike rather than on whichever ran last.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use super::stats::{Samples, StatsError, Summary};

/// How long a table cell's reason for a subject that did not run may be.
pub const REASON_CELL_CHARS: usize = 160;
/// How long the chart's label of a subject that did not run may be (it is written upright in
/// the bar's place).
const REASON_PLOT_CHARS: usize = 48;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(
        "metric {metric:?} has a cell for {subject:?}, which is not one of the report's subjects: \
         add it to `subjects` first"
    )]
    UnknownSubject { metric: String, subject: String },
    #[error("metric {metric:?} has two cells for {subject:?}: keep one per subject")]
    DuplicateCell { metric: String, subject: String },
    #[error("metric {metric:?} names {baseline:?} as its baseline, which has no cell in it")]
    UnknownBaseline { metric: String, baseline: String },
    #[error("the report names subject {0:?} twice")]
    DuplicateSubject(String),
    #[error("drawing the chart: {0}")]
    Plot(String),
    #[error("writing the chart to {path}: {source}")]
    WritePlot {
        path: String,
        source: std::io::Error,
    },
    #[error("the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// What one benchmark run measured, on which machine, when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The first line of the markdown (`peapod bench net: 3 runs ...`) and the chart's title.
    pub title: String,
    /// The day it ran, `YYYY-MM-DD` (UTC), see [`today`].
    pub date: String,
    /// The machine it ran on, see [`machine_note`].
    pub machine: String,
    /// Lines that say what the subjects are, printed under the title.
    #[serde(default)]
    pub notes: Vec<String>,
    /// The columns, in order.
    pub subjects: Vec<Subject>,
    /// The rows, in order.
    pub metrics: Vec<Metric>,
}

/// One thing measured: peapod's VM, a peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    /// How cells, ratios and the chart name it (`veth peer`).
    pub name: String,
    /// A few words the table's header adds in parentheses (`no VM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One row: a measure in one unit over all subjects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metric {
    /// `TCP stream throughput`.
    pub name: String,
    /// `Gbit/s`.
    pub unit: String,
    /// Latencies and times: true; throughputs: false. The chart says which way is better.
    pub lower_is_better: bool,
    /// Decimals of the table's numbers.
    pub decimals: usize,
    /// The subject the others are divided by in the ratio columns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    pub cells: Vec<Cell>,
}

/// One subject's result of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cell {
    pub subject: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    /// The values of the runs (empty when no run happened).
    Measured(Samples),
    /// Why this subject has no numbers here (no KVM, no pod network, failed in run 2: ...).
    NotRun { reason: String },
}

impl Outcome {
    pub fn not_run(reason: impl Into<String>) -> Self {
        Outcome::NotRun {
            reason: reason.into(),
        }
    }

    /// The statistics, or why there are none (no runs count as not run).
    pub fn summary(&self) -> Result<Summary, &str> {
        match self {
            Outcome::Measured(samples) => samples.summary().ok_or("no runs"),
            Outcome::NotRun { reason } => Err(reason),
        }
    }
}

impl Subject {
    pub fn new(name: impl Into<String>) -> Self {
        Subject {
            name: name.into(),
            detail: None,
        }
    }

    pub fn with_detail(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Subject {
            name: name.into(),
            detail: Some(detail.into()),
        }
    }

    fn header(&self) -> String {
        match &self.detail {
            Some(detail) => format!("{} ({detail})", self.name),
            None => self.name.clone(),
        }
    }
}

impl Metric {
    fn cell(&self, subject: &str) -> Option<&Outcome> {
        self.cells
            .iter()
            .find(|c| c.subject == subject)
            .map(|c| &c.outcome)
    }

    /// `subject`'s median over the baseline's: `None` where either has no numbers or the
    /// baseline's median is not above zero.
    pub fn ratio(&self, subject: &str, baseline: &str) -> Option<f64> {
        let a = self.cell(subject)?.summary().ok()?;
        let b = self.cell(baseline)?.summary().ok()?;
        (b.median > 0.0).then(|| a.median / b.median)
    }
}

impl Report {
    /// A report dated today on this machine, with no metrics yet.
    pub fn new(title: impl Into<String>, subjects: Vec<Subject>) -> Self {
        Report {
            title: title.into(),
            date: today(),
            machine: machine_note(),
            notes: Vec::new(),
            subjects,
            metrics: Vec::new(),
        }
    }

    /// Checks that cells and baselines name the report's subjects, once each.
    pub fn validate(&self) -> Result<(), ReportError> {
        for (i, subject) in self.subjects.iter().enumerate() {
            if self.subjects[..i].iter().any(|s| s.name == subject.name) {
                return Err(ReportError::DuplicateSubject(subject.name.clone()));
            }
        }
        for metric in &self.metrics {
            for (i, cell) in metric.cells.iter().enumerate() {
                let err = |subject: &str| (metric.name.clone(), subject.to_string());
                if !self.subjects.iter().any(|s| s.name == cell.subject) {
                    let (metric, subject) = err(&cell.subject);
                    return Err(ReportError::UnknownSubject { metric, subject });
                }
                if metric.cells[..i].iter().any(|c| c.subject == cell.subject) {
                    let (metric, subject) = err(&cell.subject);
                    return Err(ReportError::DuplicateCell { metric, subject });
                }
            }
            if let Some(baseline) = &metric.baseline
                && metric.cell(baseline).is_none()
            {
                return Err(ReportError::UnknownBaseline {
                    metric: metric.name.clone(),
                    baseline: baseline.clone(),
                });
            }
        }
        Ok(())
    }

    /// The ratio columns: (subject, baseline) for each subject with a cell in a metric that
    /// has a baseline, in subject order, each pair once.
    fn ratio_columns(&self) -> Vec<(&str, &str)> {
        let mut columns: Vec<(&str, &str)> = Vec::new();
        for metric in &self.metrics {
            let Some(baseline) = metric.baseline.as_deref() else {
                continue;
            };
            for subject in &self.subjects {
                let pair = (subject.name.as_str(), baseline);
                if subject.name != baseline
                    && metric.cell(&subject.name).is_some()
                    && !columns.contains(&pair)
                {
                    columns.push(pair);
                }
            }
        }
        columns
    }

    /// The markdown table alone: a row per metric, a column per subject (`median (min–max)`,
    /// or `not run: why`), then the ratio columns (`0.10x`, `-` where there is no ratio).
    pub fn markdown_table(&self) -> Result<Vec<String>, ReportError> {
        self.validate()?;
        let ratios = self.ratio_columns();
        let mut header = vec!["measure".to_string()];
        header.extend(self.subjects.iter().map(Subject::header));
        header.extend(ratios.iter().map(|(a, b)| format!("{a} / {b}")));
        let mut lines = vec![
            format!("| {} |", header.join(" | ")),
            format!("|{}", "---|".repeat(header.len())),
        ];
        for metric in &self.metrics {
            let mut row = vec![format!("{} ({})", metric.name, metric.unit)];
            for subject in &self.subjects {
                row.push(match metric.cell(&subject.name).map(Outcome::summary) {
                    Some(Ok(s)) => {
                        let d = metric.decimals;
                        format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max)
                    }
                    Some(Err(why)) => format!("not run: {}", reason_cell(why)),
                    None => "-".into(),
                });
            }
            for (subject, baseline) in &ratios {
                let applies =
                    metric.baseline.as_deref() == Some(*baseline) && metric.cell(subject).is_some();
                row.push(match metric.ratio(subject, baseline) {
                    Some(r) if applies => format!("{r:.2}x"),
                    _ => "-".into(),
                });
            }
            lines.push(format!("| {} |", row.join(" | ")));
        }
        Ok(lines)
    }

    /// The whole markdown: title, notes, date and machine, the table.
    pub fn markdown(&self) -> Result<String, ReportError> {
        let mut out = String::new();
        for line in std::iter::once(&self.title).chain(&self.notes) {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out, "{}, {}", self.date, self.machine);
        for line in self.markdown_table()? {
            let _ = writeln!(out, "{line}");
        }
        Ok(out)
    }

    /// The report as pretty JSON: the fields as named here, raw samples with their median,
    /// min, max, p25 and p75 (see [`Samples`]).
    pub fn json(&self) -> Result<String, ReportError> {
        self.validate()?;
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Reads a report [`Report::json`] wrote (the samples are checked, statistics recomputed).
    pub fn from_json(json: &str) -> Result<Report, ReportError> {
        let report: Report = serde_json::from_str(json)?;
        report.validate()?;
        Ok(report)
    }

    /// The chart as SVG text: a panel per metric (three to a row), in each a bar per subject
    /// at its median with a whisker over min–max, the median written above; a subject that did
    /// not run leaves a gap labelled with why. The y axis names the unit and which way is
    /// better.
    pub fn svg(&self) -> Result<String, ReportError> {
        self.validate()?;
        let mut out = String::new();
        plot::draw(self, &mut out).map_err(|e| ReportError::Plot(e.to_string()))?;
        Ok(out)
    }

    /// Writes [`Report::svg`] to `path`.
    pub fn write_svg(&self, path: &Path) -> Result<(), ReportError> {
        let svg = self.svg()?;
        std::fs::write(path, svg).map_err(|source| ReportError::WritePlot {
            path: path.display().to_string(),
            source,
        })
    }
}

/// A reason for a table cell: its first line, at most `REASON_CELL_CHARS` characters, no
/// `|` (which would split the cell).
pub fn reason_cell(why: &str) -> String {
    shorten(why, REASON_CELL_CHARS).replace('|', "/")
}

/// The first non-empty line of `why`, trimmed, cut to `max` characters with `…`.
fn shorten(why: &str, max: usize) -> String {
    let first = why
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("unknown");
    let mut text: String = first.trim().to_string();
    if text.chars().count() > max {
        text = text.chars().take(max.saturating_sub(1)).collect();
        text.push('…');
    }
    text
}

/// Runs each subject once per round, in order, for `runs` rounds (A B A B ...), and returns
/// per subject its values in run order or the first error it gave. A subject that failed is
/// not called again; the others go on. The error is kept as given (say "failed in run 2: ..."
/// in it where that matters); a subject that cannot run at all can fail its first call.
pub fn interleave_with<T>(
    runs: usize,
    subjects: &mut [&mut dyn FnMut(usize) -> Result<T, String>],
) -> Vec<Result<Vec<T>, String>> {
    rounds(runs, subjects, |_, _| Ok(()))
}

/// [`interleave_with`] for one number per run: each subject's [`Samples`], or why not (a
/// value that is not finite ends the subject as an error would).
pub fn interleave(
    runs: usize,
    subjects: &mut [&mut dyn FnMut(usize) -> Result<f64, String>],
) -> Vec<Outcome> {
    let finite = |run: usize, value: &f64| match value.is_finite() {
        true => Ok(()),
        false => Err(format!("run {} gave {value}, not a number", run + 1)),
    };
    rounds(runs, subjects, finite)
        .into_iter()
        .map(|result| match result.map(Samples::from_values) {
            Ok(Ok(samples)) => Outcome::Measured(samples),
            Ok(Err(e)) => Outcome::not_run(e.to_string()),
            Err(why) => Outcome::not_run(why),
        })
        .collect()
}

/// The loop of [`interleave_with`]; `accept` may turn a value into its subject's error.
fn rounds<T>(
    runs: usize,
    subjects: &mut [&mut dyn FnMut(usize) -> Result<T, String>],
    accept: impl Fn(usize, &T) -> Result<(), String>,
) -> Vec<Result<Vec<T>, String>> {
    let mut results: Vec<Result<Vec<T>, String>> =
        subjects.iter().map(|_| Ok(Vec::new())).collect();
    for run in 0..runs {
        for (subject, result) in subjects.iter_mut().zip(&mut results) {
            let Ok(values) = result else { continue };
            match subject(run).and_then(|v| accept(run, &v).map(|()| v)) {
                Ok(value) => values.push(value),
                Err(why) => *result = Err(why),
            }
        }
    }
    results
}

/// Today's date, `YYYY-MM-DD` in UTC.
pub fn today() -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    now.get(..10).unwrap_or(&now).to_string()
}

/// A line that tells machines apart: CPU model, CPU count, kernel release, and whether this
/// is the test bed's L1 (where the numbers are those of a nested, maybe emulated, machine).
pub fn machine_note() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let mut note = format!("{cpu}, {cpus} CPUs, Linux {kernel}");
    if std::env::var_os("PEAPOD_IN_MACHINE").is_some() {
        note.push_str(", inside the test bed (peapod machine run)");
    }
    note
}

/// The chart, on plotters' SVG backend.
mod plot {
    use plotters::coord::ranged1d::SegmentValue;
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    use super::{Outcome, REASON_PLOT_CHARS, Report, shorten};

    type DrawResult = Result<(), Box<dyn std::error::Error>>;

    /// Okabe–Ito colours: told apart with the common colour blindnesses; a subject keeps
    /// its colour in every panel.
    const COLOURS: [RGBColor; 7] = [
        RGBColor(0x00, 0x72, 0xB2),
        RGBColor(0xE6, 0x9F, 0x00),
        RGBColor(0x00, 0x9E, 0x73),
        RGBColor(0xCC, 0x79, 0xA7),
        RGBColor(0x56, 0xB4, 0xE9),
        RGBColor(0xD5, 0x5E, 0x00),
        RGBColor(0xF0, 0xE4, 0x42),
    ];
    const PANEL_HEIGHT: u32 = 340;
    const HEADER_HEIGHT: u32 = 56;
    const PER_ROW: usize = 3;

    pub(super) fn colour(subject: usize) -> RGBColor {
        COLOURS[subject % COLOURS.len()]
    }

    pub(super) fn draw(report: &Report, out: &mut String) -> DrawResult {
        let subjects = report.subjects.len().max(1);
        let panels = report.metrics.len().max(1);
        let columns = panels.min(PER_ROW);
        let rows = panels.div_ceil(columns);
        let panel_width = (110 * subjects as u32 + 110).max(320);
        let size = (
            panel_width * columns as u32,
            HEADER_HEIGHT + PANEL_HEIGHT * rows as u32,
        );
        let root = SVGBackend::with_string(out, size).into_drawing_area();
        root.fill(&WHITE)?;
        let (header, body) = root.split_vertically(HEADER_HEIGHT);
        let centre = Pos::new(HPos::Center, VPos::Top);
        let x = size.0 as i32 / 2;
        header.draw(&Text::new(
            report.title.clone(),
            (x, 8),
            TextStyle::from(("sans-serif", 17).into_font().style(FontStyle::Bold)).pos(centre),
        ))?;
        header.draw(&Text::new(
            format!("{}, {}", report.date, report.machine),
            (x, 32),
            ("sans-serif", 13)
                .into_font()
                .color(&BLACK.mix(0.7))
                .pos(centre),
        ))?;
        let areas = body.split_evenly((rows, columns));
        for (metric, area) in report.metrics.iter().zip(&areas) {
            panel(report, metric, area)?;
        }
        root.present()?;
        Ok(())
    }

    fn panel(
        report: &Report,
        metric: &super::Metric,
        area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    ) -> DrawResult {
        let outcomes: Vec<Option<&Outcome>> = report
            .subjects
            .iter()
            .map(|s| metric.cell(&s.name))
            .collect();
        let summaries: Vec<_> = outcomes
            .iter()
            .filter_map(|o| o.and_then(|o| o.summary().ok()))
            .collect();
        // the axis starts at zero (bars compare by length) and leaves room above the
        // highest whisker for its median's label
        let lo = summaries.iter().map(|s| s.min).fold(0.0, f64::min);
        let hi = summaries.iter().map(|s| s.max).fold(0.0, f64::max);
        let (lo, hi) = match hi - lo {
            span if span > 0.0 => (lo - span * 0.02 * f64::from(lo < 0.0), hi + span * 0.15),
            _ => (lo, lo + 1.0),
        };
        if !(lo.is_finite() && hi.is_finite()) {
            // near f64::MAX: no axis to draw them on; the table and JSON still hold them
            area.draw(&Text::new(
                format!("{}: values too large to chart", metric.name),
                (12, 12),
                ("sans-serif", 13),
            ))?;
            return Ok(());
        }
        let n = report.subjects.len();
        let better = match metric.lower_is_better {
            true => "lower is better",
            false => "higher is better",
        };
        let names: Vec<&str> = report.subjects.iter().map(|s| s.name.as_str()).collect();
        let mut chart = ChartBuilder::on(area)
            .caption(&metric.name, ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(64)
            .build_cartesian_2d((0..n).into_segmented(), lo..hi)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_labels(n.max(1))
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i).copied().unwrap_or("").to_string(),
                _ => String::new(),
            })
            .y_desc(format!("{} ({better})", metric.unit))
            .y_label_formatter(&|v| format!("{v}"))
            .label_style(("sans-serif", 12))
            .draw()?;
        let d = metric.decimals;
        for (i, outcome) in outcomes.iter().enumerate() {
            let Some(outcome) = outcome else { continue };
            let centre = || SegmentValue::CenterOf(i);
            match outcome.summary() {
                Ok(s) => {
                    let mut bar = Rectangle::new(
                        [
                            (SegmentValue::Exact(i), 0.0),
                            (SegmentValue::Exact(i + 1), s.median),
                        ],
                        colour(i).filled(),
                    );
                    bar.set_margin(0, 0, 18, 18);
                    chart.draw_series([bar])?;
                    let whisker = BLACK.stroke_width(1);
                    chart.draw_series([PathElement::new(
                        vec![(centre(), s.min), (centre(), s.max)],
                        whisker,
                    )])?;
                    for end in [s.min, s.max] {
                        chart.draw_series([EmptyElement::at((centre(), end))
                            + PathElement::new(vec![(-6, 0), (6, 0)], whisker)])?;
                    }
                    chart.draw_series([EmptyElement::at((centre(), s.max))
                        + Text::new(
                            format!("{:.d$}", s.median),
                            (0, -6),
                            TextStyle::from(("sans-serif", 12))
                                .pos(Pos::new(HPos::Center, VPos::Bottom)),
                        )])?;
                }
                Err(why) => {
                    let label = format!("not run: {}", shorten(why, REASON_PLOT_CHARS));
                    chart.draw_series([EmptyElement::at((centre(), lo))
                        + Text::new(
                            label,
                            (4, -6),
                            ("sans-serif", 11)
                                .into_font()
                                .transform(FontTransform::Rotate270)
                                .color(&BLACK.mix(0.75))
                                .pos(Pos::new(HPos::Left, VPos::Center)),
                        )])?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(values: &[f64]) -> Outcome {
        Outcome::Measured(Samples::from_values(values.iter().copied()).unwrap())
    }

    fn cell(subject: &str, outcome: Outcome) -> Cell {
        Cell {
            subject: subject.into(),
            outcome,
        }
    }

    /// Three subjects, one of them not run, two metrics against a baseline.
    fn sample_report() -> Report {
        Report {
            title: "peapod bench boot: 3 runs".into(),
            date: "2026-12-02".into(),
            machine: "Test CPU, 4 CPUs, Linux 6.12".into(),
            notes: vec!["same kernel and initramfs".into()],
            subjects: vec![
                Subject::new("peapod VM"),
                Subject::with_detail("QEMU microvm", "peer"),
                Subject::new("crun"),
            ],
            metrics: vec![
                Metric {
                    name: "boot".into(),
                    unit: "ms".into(),
                    lower_is_better: true,
                    decimals: 1,
                    baseline: Some("QEMU microvm".into()),
                    cells: vec![
                        cell("peapod VM", measured(&[20.0, 22.0, 21.0])),
                        cell("QEMU microvm", measured(&[40.0, 44.0, 42.5])),
                        cell(
                            "crun",
                            Outcome::not_run("no crun in PATH | apt\nsecond line"),
                        ),
                    ],
                },
                Metric {
                    name: "memory".into(),
                    unit: "MiB".into(),
                    lower_is_better: true,
                    decimals: 0,
                    baseline: Some("QEMU microvm".into()),
                    cells: vec![
                        cell("peapod VM", measured(&[10.0, 12.0])),
                        cell("QEMU microvm", measured(&[0.0])),
                        cell("crun", Outcome::not_run("no crun in PATH")),
                    ],
                },
            ],
        }
    }

    #[test]
    fn markdown_golden() {
        let md = sample_report().markdown().unwrap();
        assert_eq!(
            md,
            "peapod bench boot: 3 runs\n\
             same kernel and initramfs\n\
             2026-12-02, Test CPU, 4 CPUs, Linux 6.12\n\
             | measure | peapod VM | QEMU microvm (peer) | crun | peapod VM / QEMU microvm | \
             crun / QEMU microvm |\n\
             |---|---|---|---|---|---|\n\
             | boot (ms) | 21.0 (20.0–22.0) | 42.5 (40.0–44.0) | not run: no crun in PATH / apt \
             | 0.49x | - |\n\
             | memory (MiB) | 11 (10–12) | 0 (0–0) | not run: no crun in PATH | - | - |\n"
        );
    }

    #[test]
    fn json_golden_and_back() {
        let mut report = sample_report();
        report.metrics.truncate(1);
        let json = report.json().unwrap();
        let expected = serde_json::json!({
            "title": "peapod bench boot: 3 runs",
            "date": "2026-12-02",
            "machine": "Test CPU, 4 CPUs, Linux 6.12",
            "notes": ["same kernel and initramfs"],
            "subjects": [
                {"name": "peapod VM"},
                {"name": "QEMU microvm", "detail": "peer"},
                {"name": "crun"},
            ],
            "metrics": [{
                "name": "boot",
                "unit": "ms",
                "lower_is_better": true,
                "decimals": 1,
                "baseline": "QEMU microvm",
                "cells": [
                    {"subject": "peapod VM", "outcome": {"measured": {
                        "samples": [20.0, 22.0, 21.0], "median": 21.0, "min": 20.0,
                        "max": 22.0, "p25": 20.5, "p75": 21.5}}},
                    {"subject": "QEMU microvm", "outcome": {"measured": {
                        "samples": [40.0, 44.0, 42.5], "median": 42.5, "min": 40.0,
                        "max": 44.0, "p25": 41.25, "p75": 43.25}}},
                    {"subject": "crun", "outcome": {"not_run": {
                        "reason": "no crun in PATH | apt\nsecond line"}}},
                ],
            }],
        });
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&json).unwrap(),
            expected
        );
        assert_eq!(Report::from_json(&json).unwrap(), report);
        let unknown = json.replacen("\"title\"", "\"colour\": 1, \"title\"", 1);
        assert!(Report::from_json(&unknown).is_err());
    }

    #[test]
    fn cells_must_name_the_subjects() {
        let mut report = sample_report();
        report.metrics[0].cells.push(cell("kata", measured(&[1.0])));
        assert!(matches!(
            report.markdown_table(),
            Err(ReportError::UnknownSubject { .. })
        ));
        let mut report = sample_report();
        report.metrics[1].cells.push(cell("crun", measured(&[1.0])));
        assert!(matches!(
            report.json(),
            Err(ReportError::DuplicateCell { .. })
        ));
        let mut report = sample_report();
        report.metrics[0].baseline = Some("kata".into());
        assert!(matches!(
            report.svg(),
            Err(ReportError::UnknownBaseline { .. })
        ));
        let mut report = sample_report();
        report.subjects.push(Subject::new("crun"));
        assert!(matches!(
            report.validate(),
            Err(ReportError::DuplicateSubject(_))
        ));
    }

    #[test]
    fn a_missing_cell_and_no_runs_read_as_such() {
        let mut report = sample_report();
        report.metrics[1].cells.remove(2);
        report.metrics[1].cells[0].outcome = Outcome::Measured(Samples::new());
        let table = report.markdown_table().unwrap();
        assert_eq!(
            table[3],
            "| memory (MiB) | not run: no runs | 0 (0–0) | - | - | - |"
        );
        report.metrics[1].baseline = None;
        assert!(report.markdown_table().unwrap()[3].ends_with("| - | - |"));
    }

    /// The `fill` of each `<rect>`: plotters writes one per bar, plus the white background.
    fn rect_fills(svg: &str) -> Vec<String> {
        svg.split("<rect")
            .skip(1)
            .filter_map(|r| {
                let tag = &r[..r.find('>')?];
                let at = tag.find("fill=\"")? + 6;
                Some(tag[at..at + tag[at..].find('"')?].to_string())
            })
            .collect()
    }

    #[test]
    fn the_chart_has_a_bar_per_measured_cell_and_every_label() {
        let report = sample_report();
        let svg = report.svg().unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{svg}"
        );
        // XML-ish: every tag closes
        let opened = svg.matches('<').count();
        assert_eq!(opened, svg.matches('>').count());
        for subject in &report.subjects {
            assert!(
                svg.contains(&format!("\n{}\n", subject.name)),
                "{}",
                subject.name
            );
        }
        for metric in &report.metrics {
            assert!(
                svg.contains(&format!("\n{}\n", metric.name)),
                "{}",
                metric.name
            );
            assert!(svg.contains(&format!("{} (lower is better)", metric.unit)));
        }
        assert_eq!(svg.matches("not run: no crun in PATH").count(), 2);
        let bars: Vec<String> = rect_fills(&svg)
            .into_iter()
            .filter(|f| f != "#FFFFFF")
            .collect();
        let colour = |i| {
            let c = plot::colour(i);
            format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
        };
        // two metrics × (peapod VM, QEMU microvm); crun did not run
        assert_eq!(bars, [colour(0), colour(1), colour(0), colour(1)]);
        // the median is written above its bar
        assert!(svg.contains("\n21.0\n") && svg.contains("\n42.5\n"));
    }

    #[test]
    fn the_chart_draws_odd_reports() {
        // no metrics, one metric with nothing measured, negative values
        let mut report = sample_report();
        report.metrics.clear();
        assert!(report.svg().unwrap().contains("</svg>"));
        report.metrics.push(Metric {
            name: "delta".into(),
            unit: "ms".into(),
            lower_is_better: false,
            decimals: 1,
            baseline: None,
            cells: vec![
                cell("peapod VM", measured(&[-3.0, 2.0])),
                cell("crun", Outcome::not_run("x".repeat(200))),
            ],
        });
        let svg = report.svg().unwrap();
        assert_eq!(
            rect_fills(&svg).iter().filter(|f| *f != "#FFFFFF").count(),
            1
        );
        assert!(svg.contains(&format!("not run: {}…", "x".repeat(REASON_PLOT_CHARS - 1))));
        report.metrics[0].cells.truncate(0);
        report.svg().unwrap();
        report.metrics[0].cells = vec![cell("crun", measured(&[f64::MAX, -f64::MAX]))];
        assert!(report.svg().unwrap().contains("values too large to chart"));
    }

    #[test]
    fn interleaving_alternates_and_stops_a_failed_subject() {
        let order = std::cell::RefCell::new(Vec::new());
        let mut a = |run: usize| -> Result<f64, String> {
            order.borrow_mut().push(('a', run));
            Ok(run as f64 + 1.0)
        };
        let mut b = |run: usize| -> Result<f64, String> {
            order.borrow_mut().push(('b', run));
            match run {
                1 => Err(format!("failed in run {}: reset", run + 1)),
                _ => Ok(10.0),
            }
        };
        let mut never = |_: usize| -> Result<f64, String> { Err("no KVM here".into()) };
        let mut nan =
            |run: usize| -> Result<f64, String> { Ok(if run == 2 { f64::NAN } else { 1.0 }) };
        let outcomes = interleave(3, &mut [&mut a, &mut b, &mut never, &mut nan]);
        assert_eq!(
            *order.borrow(),
            [('a', 0), ('b', 0), ('a', 1), ('b', 1), ('a', 2)]
        );
        assert_eq!(outcomes[0], measured(&[1.0, 2.0, 3.0]));
        assert_eq!(outcomes[1], Outcome::not_run("failed in run 2: reset"));
        assert_eq!(outcomes[2], Outcome::not_run("no KVM here"));
        assert_eq!(
            outcomes[3],
            Outcome::not_run("run 3 gave NaN, not a number")
        );
        let none = interleave(0, &mut [&mut a]);
        assert_eq!(none[0].summary(), Err("no runs"));
    }

    #[test]
    fn interleave_with_keeps_whole_runs() {
        let mut calls = 0;
        let mut pair = |run: usize| -> Result<(usize, f64), String> {
            calls += 1;
            Ok((run, 0.5))
        };
        let results = interleave_with(2, &mut [&mut pair]);
        assert_eq!(results, [Ok(vec![(0, 0.5), (1, 0.5)])]);
        assert_eq!(calls, 2);
    }

    #[test]
    fn reasons_fit_a_cell() {
        assert_eq!(reason_cell("a | b\nc"), "a / b");
        assert_eq!(reason_cell("\n\n"), "unknown");
        let long = reason_cell(&"x".repeat(500));
        assert_eq!(long.chars().count(), REASON_CELL_CHARS);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn the_date_and_machine_are_filled_in() {
        let report = Report::new("t", vec![Subject::new("a")]);
        assert_eq!(report.date.len(), 10, "{}", report.date);
        assert_eq!(report.date.as_bytes()[4], b'-');
        assert!(
            report.machine.contains("CPUs, Linux "),
            "{}",
            report.machine
        );
    }
}
