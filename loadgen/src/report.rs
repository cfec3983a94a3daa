//! The end of a run: one report per mode, printed as a table for people or as one JSON object for tools.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::modes::cancel::CancelReport;
use crate::modes::compare::CompareReport;
use crate::modes::connections::ConnectionsReport;
use crate::modes::poll::PollReport;
use crate::modes::push::PushReport;
use crate::stats::{Problems, Summary};

/// What a run measured, tagged with its mode (`"mode": "latency"` in JSON).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Report {
    /// One job at a time over one socket.
    Latency(PushReport),
    /// Many sockets, pipelined.
    Throughput(PushReport),
    /// The polling API.
    Poll(PollReport),
    /// Push and poll side by side.
    Compare(Box<CompareReport>),
    /// Idle sockets.
    Connections(ConnectionsReport),
    /// Long jobs cancelled once they run.
    Cancel(CancelReport),
}

/// How a run ended, as the process's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Everything done, nothing wrong.
    Clean = 0,
    /// Finished, but something failed or was wrong.
    Problems = 1,
    /// Stopped by `--timeout`.
    TimedOut = 2,
}

impl Report {
    /// Whether the run finished in time and without problems.
    pub fn verdict(&self) -> Verdict {
        let (timed_out, clean) = match self {
            Self::Latency(r) | Self::Throughput(r) => (r.timed_out, r.is_clean()),
            Self::Poll(r) => (r.timed_out, r.is_clean()),
            Self::Compare(r) => (r.timed_out(), r.is_clean()),
            Self::Connections(r) => (r.timed_out, r.is_clean()),
            Self::Cancel(r) => (r.timed_out, r.is_clean()),
        };
        match (timed_out, clean) {
            (true, _) => Verdict::TimedOut,
            (false, false) => Verdict::Problems,
            (false, true) => Verdict::Clean,
        }
    }

    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report always serialises")
    }

    /// The report as a table for a terminal.
    pub fn to_table(&self) -> String {
        match self {
            Self::Latency(r) => push_table("latency", r),
            Self::Throughput(r) => push_table("throughput", r),
            Self::Poll(r) => poll_table(r),
            Self::Compare(r) => compare_table(r),
            Self::Connections(r) => connections_table(r),
            Self::Cancel(r) => cancel_table(r),
        }
    }
}

/// Milliseconds with microsecond resolution.
pub fn ms(value: f64) -> String {
    format!("{value:.3}")
}

/// Rows of cells: the first column aligned left, the others right, two spaces apart.
pub fn grid(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let width = widths[c];
            if c == 0 {
                let _ = write!(line, "{cell:<width$}");
            } else {
                let _ = write!(line, "  {cell:>width$}");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `label  value` lines, labels padded to the widest.
fn pairs(rows: &[(String, String)]) -> String {
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

/// A latency table: one row per measurement.
pub fn latency_grid(title: &str, rows: &[(&str, Option<Summary>)]) -> String {
    let mut header = vec![title.to_owned()];
    header.extend(["count", "p50", "p90", "p99", "max", "mean"].map(str::to_owned));
    let mut cells = vec![header];
    for (label, summary) in rows {
        let mut row = vec![(*label).to_owned()];
        match summary {
            Some(s) => {
                row.push(s.count.to_string());
                row.extend(
                    [s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms, s.mean_ms]
                        .into_iter()
                        .map(ms),
                );
            }
            None => row.extend(std::iter::once("0".to_owned()).chain(vec!["-".to_owned(); 5])),
        }
        cells.push(row);
    }
    grid(&cells)
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The problem lines of a report (`errors  none` when there are none).
pub fn problem_rows(p: &Problems) -> Vec<(String, String)> {
    if p.is_empty() {
        return vec![("errors".into(), "none".into())];
    }
    let mut rows = Vec::new();
    if !p.server_errors.is_empty() {
        let mut text = counts(&p.server_errors);
        if p.server_errors.contains_key("busy") {
            text.push_str(" (busy submits are retried)");
        }
        rows.push(("server errors".into(), text));
    }
    if !p.failed_jobs.is_empty() {
        rows.push(("failed jobs".into(), counts(&p.failed_jobs)));
    }
    if p.wrong_results > 0 {
        rows.push(("wrong results".into(), p.wrong_results.to_string()));
    }
    if p.malformed > 0 {
        rows.push((
            "malformed".into(),
            plural(p.malformed, "message", "messages"),
        ));
    }
    if !p.unexpected.is_empty() {
        rows.push(("unexpected".into(), counts(&p.unexpected)));
    }
    if !p.transport.is_empty() {
        rows.push(("transport".into(), counts(&p.transport)));
    }
    for sample in &p.samples {
        rows.push(("  e.g.".into(), sample.clone()));
    }
    rows
}

fn notes(out: &mut String, timed_out: bool, notes: &[String]) {
    if timed_out {
        out.push_str("TIMED OUT: the run hit --timeout; the figures above are what was measured until then\n");
    }
    for note in notes {
        let _ = writeln!(out, "note: {note}");
    }
}

fn plural(count: u64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

fn push_summary(r: &PushReport) -> String {
    let warmup = if r.warmup > 0 {
        format!(" after {} warm-up", r.warmup)
    } else {
        String::new()
    };
    let mut text = format!(
        "{} measured{warmup}; of all {}: {} done, {} failed, {} unfinished",
        r.jobs,
        r.jobs + r.warmup,
        r.done,
        r.failed,
        r.unfinished
    );
    if r.busy_retries > 0 {
        let _ = write!(text, "; {} busy retries", r.busy_retries);
    }
    text
}

fn push_table(mode: &str, r: &PushReport) -> String {
    let mut out = format!(
        "{mode}: {}, n={}, {}, {} in flight per socket\n\n",
        r.url,
        r.n,
        if r.connections_open == r.connections {
            plural(r.connections, "socket", "sockets")
        } else {
            format!("{} of {} sockets open", r.connections_open, r.connections)
        },
        r.window
    );
    let mut rows = vec![
        ("jobs".to_owned(), push_summary(r)),
        (
            "rate".to_owned(),
            format!(
                "{:.1} jobs/s end to end ({:.3} s from first submit to last result)",
                r.jobs_per_s, r.elapsed_s
            ),
        ),
    ];
    if r.awaiting_result > 0 {
        let ids: Vec<_> = r.awaiting_ids.iter().map(|id| id.to_string()).collect();
        rows.push((
            "no result".to_owned(),
            format!(
                "{} accepted jobs had no result when the run stopped, e.g. {}",
                r.awaiting_result,
                ids.join(" ")
            ),
        ));
    }
    if let Some(t) = r.server_timings {
        rows.push((
            "server says".to_owned(),
            format!(
                "mean queued {:.3} ms, compute {:.3} ms, total {:.3} ms",
                t.queued_ms, t.compute_ms, t.total_ms
            ),
        ));
    }
    out.push_str(&pairs(&rows));
    out.push('\n');
    out.push_str(&latency_grid(
        "latency (ms)",
        &[
            ("submit -> result", r.result_latency),
            ("submit -> accepted", r.accepted_latency),
        ],
    ));
    out.push('\n');
    out.push_str(&pairs(&problem_rows(&r.problems)));
    notes(&mut out, r.timed_out, &r.notes);
    out
}

fn poll_summary(r: &PollReport) -> String {
    format!(
        "{}: {} done, {} failed, {} unfinished",
        r.jobs, r.done, r.failed, r.unfinished
    )
}

fn poll_table(r: &PollReport) -> String {
    let mut out = format!(
        "poll: {}, n={}, {} at once, a poll every {:.3} s\n\n",
        r.url, r.n, r.concurrency, r.interval_s
    );
    out.push_str(&pairs(&[
        ("jobs".to_owned(), poll_summary(r)),
        (
            "requests".to_owned(),
            format!(
                "{} ({:.2} polls per job) in {:.3} s",
                r.requests, r.polls_per_job, r.elapsed_s
            ),
        ),
    ]));
    out.push('\n');
    out.push_str(&latency_grid(
        "latency (ms)",
        &[
            ("submit -> poll sees done", r.result_latency),
            ("GET /factorial", r.submit_latency),
        ],
    ));
    out.push('\n');
    out.push_str(&pairs(&problem_rows(&r.problems)));
    notes(&mut out, r.timed_out, &r.notes);
    out
}

fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}x"))
}

fn compare_table(r: &CompareReport) -> String {
    let (push, poll) = (&r.push, &r.poll);
    let mut out = format!(
        "compare: push over {} (one job at a time) vs poll over {} (every {:.3} s), n={}\n\n",
        push.url, poll.url, poll.interval_s, push.n
    );
    out.push_str(&pairs(&[
        ("push jobs".to_owned(), push_summary(push)),
        (
            "poll jobs".to_owned(),
            format!("{}, {} at once", poll_summary(poll), poll.concurrency),
        ),
    ]));
    out.push('\n');
    let pick = |s: Option<Summary>, f: fn(&Summary) -> f64| s.map_or("-".to_owned(), |s| ms(f(&s)));
    let mut rows = vec![vec![
        "submit -> result (ms)".to_owned(),
        "push (ws)".to_owned(),
        "poll (http)".to_owned(),
        "poll/push".to_owned(),
    ]];
    type Pick = fn(&Summary) -> f64;
    let stats: [(&str, Pick); 5] = [
        ("p50", |s| s.p50_ms),
        ("p90", |s| s.p90_ms),
        ("p99", |s| s.p99_ms),
        ("max", |s| s.max_ms),
        ("mean", |s| s.mean_ms),
    ];
    for (label, f) in stats {
        let quotient = match (push.result_latency, poll.result_latency) {
            (Some(a), Some(b)) if f(&a) > 0.0 => Some(f(&b) / f(&a)),
            _ => None,
        };
        rows.push(vec![
            label.to_owned(),
            pick(push.result_latency, f),
            pick(poll.result_latency, f),
            ratio(quotient),
        ]);
    }
    let count = |s: Option<Summary>| s.map_or(0, |s| s.count).to_string();
    rows.push(vec![
        "count".to_owned(),
        count(push.result_latency),
        count(poll.result_latency),
        String::new(),
    ]);
    out.push_str(&grid(&rows));
    out.push('\n');
    let _ = writeln!(
        out,
        "polling takes {} the mean and {} the median of pushing",
        ratio(r.ratio_mean),
        ratio(r.ratio_p50)
    );
    for (half, problems) in [("push", &push.problems), ("poll", &poll.problems)] {
        let rows: Vec<_> = problem_rows(problems)
            .into_iter()
            .map(|(k, v)| (format!("{half} {}", k.trim_start()), v))
            .collect();
        out.push_str(&pairs(&rows));
    }
    notes(
        &mut out,
        push.timed_out || poll.timed_out,
        &[push.notes.clone(), poll.notes.clone()].concat(),
    );
    out
}

fn kib(value: Option<u64>) -> String {
    value.map_or_else(
        || "-".to_owned(),
        |v| format!("{:.1} MiB", v as f64 / 1024.0),
    )
}

fn connections_table(r: &ConnectionsReport) -> String {
    let mut out = format!(
        "connections: {}, {} idle sockets at up to {}/s, {} handshakes at once\n\n",
        r.url, r.sockets, r.rate_limit, r.handshakes_limit
    );
    let mut rows = vec![
        (
            "sockets".to_owned(),
            format!(
                "{} opened, {} failed, {} dropped while held for {:.1} s",
                r.opened, r.failed, r.dropped, r.hold_s
            ),
        ),
        (
            "opening".to_owned(),
            format!("{:.3} s, {:.1} sockets/s", r.open_elapsed_s, r.open_rate),
        ),
    ];
    if let Some(fd) = r.fd_limit {
        let server = r
            .server_fd_limit
            .map_or(String::new(), |l| format!("; server soft limit {l}"));
        rows.push((
            "open files".to_owned(),
            format!(
                "this process soft {} (was {}), hard {}{server}",
                fd.soft, fd.soft_before, fd.hard
            ),
        ));
    }
    if let Some(pid) = r.server_pid {
        rows.push((
            "server rss".to_owned(),
            format!(
                "pid {pid}: before {}, held {}, after close {}",
                kib(r.rss_before_kib),
                kib(r.rss_held_kib),
                kib(r.rss_after_close_kib)
            ),
        ));
        rows.push((
            "per socket".to_owned(),
            r.rss_per_socket_kib
                .map_or("-".to_owned(), |v| format!("{v:.1} KiB of server RSS")),
        ));
    }
    if let (Some(before), Some(held), Some(per_socket)) =
        (r.kernel_before, r.kernel_held, r.kernel_per_socket_kib)
    {
        rows.push((
            "kernel".to_owned(),
            format!(
                "socket slabs +{:.1} MiB, {per_socket:.1} KiB per socket (both ends are on this \
                 machine); TCP buffers {} -> {} pages",
                (held.socket_slabs_bytes as f64 - before.socket_slabs_bytes as f64)
                    / (1024.0 * 1024.0),
                before.tcp_buffer_pages,
                held.tcp_buffer_pages
            ),
        ));
    }
    if let Some(jobs) = &r.jobs {
        rows.push((
            "jobs meanwhile".to_owned(),
            format!(
                "n={} at {}/s over {:.1} s: {} submitted, {} done, {} failed, {} unfinished",
                jobs.n,
                jobs.rate,
                jobs.submitting_s,
                jobs.submitted,
                jobs.done,
                jobs.failed,
                jobs.unfinished
            ),
        ));
    }
    out.push_str(&pairs(&rows));
    out.push('\n');
    let mut latencies = vec![("connect + handshake", r.handshake_latency)];
    if let Some(jobs) = &r.jobs {
        latencies.push(("job: submit -> result", jobs.result_latency));
    }
    out.push_str(&latency_grid("latency (ms)", &latencies));
    out.push('\n');
    out.push_str(&pairs(&problem_rows(&r.problems)));
    if let Some(jobs) = r.jobs.as_ref().filter(|jobs| !jobs.problems.is_empty()) {
        out.push_str("\njobs meanwhile:\n");
        out.push_str(&pairs(&problem_rows(&jobs.problems)));
    }
    notes(&mut out, r.timed_out, &r.notes);
    out
}

fn cancel_table(r: &CancelReport) -> String {
    let last_n = r.n.saturating_sub(r.jobs.saturating_sub(1));
    let mut out = format!(
        "cancel: {}, n={} down to {last_n}, {} one at a time on one socket, each cancelled {}\n\n",
        r.url,
        r.n,
        plural(r.jobs, "job", "jobs"),
        if r.delay_ms > 0.0 {
            format!("{} ms after its first progress", ms(r.delay_ms))
        } else {
            "at its first progress".to_owned()
        }
    );
    let mut rows = vec![(
        "jobs".to_owned(),
        format!(
            "{}: {} cancelled, {} finished otherwise, {} refused, {} unfinished",
            r.jobs, r.cancelled, r.finished, r.refused, r.unfinished
        ),
    )];
    if let Some((lo, hi)) = r.fraction_range() {
        rows.push((
            "cancelled at".to_owned(),
            format!("fraction {lo:.2} to {hi:.2} of the job (its first progress)"),
        ));
    }
    rows.push((
        "after cancel".to_owned(),
        if r.after_cancel.is_empty() {
            "nothing else came between a cancel and its result".to_owned()
        } else {
            counts(&r.after_cancel)
        },
    ));
    out.push_str(&pairs(&rows));
    out.push('\n');
    out.push_str(&latency_grid(
        "latency (ms)",
        &[
            ("cancel -> cancelled", r.cancel_latency),
            ("submit -> first progress", r.progress_latency),
            ("submit -> accepted", r.accepted_latency),
        ],
    ));
    out.push('\n');
    out.push_str(&pairs(&problem_rows(&r.problems)));
    notes(&mut out, r.timed_out, &r.notes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(base: f64) -> Summary {
        Summary {
            count: 1000,
            p50_ms: base,
            p90_ms: base * 2.0,
            p99_ms: base * 3.0,
            max_ms: base * 10.0,
            mean_ms: base * 1.25,
            min_ms: base / 2.0,
        }
    }

    #[test]
    fn grid_aligns_columns() {
        let table = grid(&[
            vec!["name".into(), "count".into()],
            vec!["a long label".into(), "7".into()],
        ]);
        assert_eq!(table, "name          count\na long label      7\n");
    }

    #[test]
    fn latency_grid_prints_milliseconds_with_three_decimals() {
        let table = latency_grid("latency (ms)", &[("x", Some(summary(1.5))), ("y", None)]);
        let lines: Vec<_> = table.lines().collect();
        assert_eq!(
            lines[0],
            "latency (ms)  count    p50    p90    p99     max   mean"
        );
        assert_eq!(
            lines[1],
            "x              1000  1.500  3.000  4.500  15.000  1.875"
        );
        assert_eq!(
            lines[2],
            "y                 0      -      -      -       -      -"
        );
    }

    #[test]
    fn problems_render_by_kind() {
        assert_eq!(
            problem_rows(&Problems::default()),
            vec![("errors".to_owned(), "none".to_owned())]
        );
        let mut p = Problems::default();
        p.server_error("busy");
        p.server_error("busy");
        p.malformed("{", "EOF");
        let text = pairs(&problem_rows(&p));
        assert!(
            text.contains("server errors  busy 2 (busy submits are retried)"),
            "{text}"
        );
        assert!(text.contains("malformed      1 message"), "{text}");
        assert!(
            text.contains("  e.g.         malformed (EOF): {\n"),
            "{text}"
        );
    }

    #[test]
    fn compare_ratios() {
        use crate::modes::compare::ratios;
        let (mean, p50) = ratios(Some(summary(2.0)), Some(summary(5000.0)));
        assert_eq!((mean, p50), (Some(2500.0), Some(2500.0)));
        assert_eq!(ratios(None, Some(summary(1.0))), (None, None));
        assert_eq!(ratio(Some(2500.0)), "2500.0x");
        assert_eq!(ratio(None), "-");
    }

    #[test]
    fn cancel_table_and_json() {
        use crate::modes::cancel::{RoundOutcome, RoundReport};
        let round = |fraction| RoundReport {
            n: 1_000_000,
            id: None,
            outcome: RoundOutcome::Cancelled,
            detail: None,
            accepted_ms: Some(1.0),
            progress_ms: Some(300.0),
            fraction: Some(fraction),
            phase: None,
            cancel_ms: Some(45.0),
            after_cancel: BTreeMap::new(),
        };
        let report = CancelReport {
            url: "ws://127.0.0.1:9/ws".into(),
            n: 1_000_000,
            jobs: 2,
            delay_ms: 0.0,
            cancelled: 2,
            finished: 0,
            refused: 0,
            unfinished: 0,
            cancel_latency: Some(summary(45.0)),
            progress_latency: Some(summary(300.0)),
            accepted_latency: Some(summary(1.0)),
            after_cancel: BTreeMap::from([("progress".to_owned(), 1)]),
            rounds: vec![round(0.31), round(0.22)],
            problems: Problems::default(),
            timed_out: false,
            notes: Vec::new(),
        };
        let report = Report::Cancel(report);
        assert_eq!(report.verdict(), Verdict::Clean);
        let table = report.to_table();
        assert!(
            table.starts_with("cancel: ws://127.0.0.1:9/ws, n=1000000 down to 999999, 2 jobs"),
            "{table}"
        );
        assert!(
            table.contains("cancelled at  fraction 0.22 to 0.31"),
            "{table}"
        );
        assert!(table.contains("after cancel  progress 1"), "{table}");
        assert!(table.contains("cancel -> cancelled"), "{table}");
        assert!(report.to_json().starts_with(r#"{"mode":"cancel","#));
    }
}
