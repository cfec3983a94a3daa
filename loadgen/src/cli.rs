//! Command-line flags: one subcommand per kind of run, plus the options every run shares.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Drives load at a Herald server on this machine and reports what it measured.
#[derive(Debug, Parser)]
#[command(
    name = "herald-loadgen",
    version,
    about,
    long_about = None,
    after_help = "Exit status: 0 when every job is done and correct with nothing unexpected; 1 when \
                  something failed, was wrong or malformed, or the server could not be reached; 2 when \
                  --timeout cut the run short (what was measured is still printed)."
)]
pub struct Cli {
    /// Options every mode takes.
    #[command(flatten)]
    pub common: Common,
    /// The kind of run.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every mode takes (accepted before or after the subcommand).
#[derive(Debug, Args)]
pub struct Common {
    /// Base URL of the server; the WebSocket is ws://HOST:PORT/ws. Loopback hosts only (127.0.0.0/8, ::1,
    /// localhost).
    #[arg(
        long,
        global = true,
        env = "HERALD_LOADGEN_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,

    /// Bound on the whole run (e.g. 120, 90s, 2m). On expiry what was measured so far is printed and the
    /// exit code is 2.
    #[arg(
        long,
        global = true,
        env = "HERALD_LOADGEN_TIMEOUT",
        default_value = "120s",
        value_parser = parse_duration
    )]
    pub timeout: Duration,

    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    pub json: bool,

    /// No progress bar and no progress notes on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

/// The kinds of run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// One job at a time over one socket: submit-to-result latency without load.
    Latency(LatencyArgs),
    /// Many sockets with pipelined submits: jobs/s end to end and latency under load.
    Throughput(ThroughputArgs),
    /// The classic polling API: GET /factorial, then GET /factorial/result every --interval.
    Poll(PollArgs),
    /// `latency` (push) then `poll` against the same server, side by side.
    Compare(CompareArgs),
    /// Many idle WebSockets held open: how many the server takes, and its memory per socket.
    Connections(ConnectionsArgs),
    /// Long jobs cancelled once they run: time from the cancel to the `cancelled` result.
    Cancel(CancelArgs),
}

/// Flags that point a run at another model than the factorial.
#[derive(Debug, Clone, Default, Args)]
pub struct ModelArgs {
    /// Submit every job to this model instead of the factorial (with --input).
    #[arg(long, requires = "input")]
    pub model: Option<String>,
    /// The input of every job of --model, as JSON.
    #[arg(long, requires = "model", value_parser = parse_json)]
    pub input: Option<String>,
    /// The output every job of --model must give, as JSON; without it any `done` result counts.
    #[arg(long, requires = "model", value_parser = parse_json)]
    pub expect: Option<String>,
}

impl ModelArgs {
    /// The model job these flags describe, if any.
    pub fn job(&self) -> Option<std::sync::Arc<crate::modes::push::ModelJob>> {
        let (model, input) = (self.model.clone()?, self.input.clone()?);
        Some(std::sync::Arc::new(crate::modes::push::ModelJob {
            model,
            input,
            expect: self
                .expect
                .as_deref()
                .map(|e| serde_json::from_str(e).expect("checked by parse_json")),
        }))
    }
}

/// Reads a JSON value given on the command line (kept as its text).
fn parse_json(raw: &str) -> Result<String, String> {
    serde_json::from_str::<serde_json::Value>(raw)
        .map(|_| raw.to_owned())
        .map_err(|e| format!("not JSON: {e}"))
}

/// Flags of `latency`.
#[derive(Debug, Clone, Args)]
pub struct LatencyArgs {
    /// The input of every job (n!).
    #[arg(long, default_value_t = 10)]
    pub n: u64,
    /// Another model to submit to.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Jobs measured.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub jobs: u64,
    /// Jobs run first and not measured (connection set-up, caches, lazy paths).
    #[arg(long, default_value_t = 50)]
    pub warmup: u64,
}

/// Flags of `throughput`.
#[derive(Debug, Clone, Args)]
pub struct ThroughputArgs {
    /// The input of every job (n!).
    #[arg(long, default_value_t = 10)]
    pub n: u64,
    /// Another model to submit to.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Concurrent WebSockets.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub connections: u64,
    /// Jobs in total, shared by all sockets.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub jobs: u64,
    /// Jobs each socket keeps in flight (the server allows 100 by default; beyond it, `busy`).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub window: u64,
}

/// Flags of `poll`.
#[derive(Debug, Clone, Args)]
pub struct PollArgs {
    /// The input of every job (n!).
    #[arg(long, default_value_t = 10)]
    pub n: u64,
    /// Jobs in total.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub jobs: u64,
    /// Jobs submitted and polled at once.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub concurrency: u64,
    /// Time between two polls of one job, as the classic design tells clients (e.g. 5, 5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = parse_positive_duration)]
    pub interval: Duration,
}

/// Flags of `compare`.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// The input of every job (n!), both ways.
    #[arg(long, default_value_t = 10)]
    pub n: u64,
    /// Jobs measured over the WebSocket (as `latency --jobs`).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub push_jobs: u64,
    /// WebSocket jobs run first and not measured.
    #[arg(long, default_value_t = 50)]
    pub warmup: u64,
    /// Jobs through the polling API (as `poll --jobs`).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub poll_jobs: u64,
    /// Polling jobs at once.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub concurrency: u64,
    /// Time between two polls of one job.
    #[arg(long, default_value = "5s", value_parser = parse_positive_duration)]
    pub interval: Duration,
}

impl CompareArgs {
    /// The push half.
    pub fn latency(&self) -> LatencyArgs {
        LatencyArgs {
            n: self.n,
            model: ModelArgs::default(),
            jobs: self.push_jobs,
            warmup: self.warmup,
        }
    }

    /// The polling half.
    pub fn poll(&self) -> PollArgs {
        PollArgs {
            n: self.n,
            jobs: self.poll_jobs,
            concurrency: self.concurrency,
            interval: self.interval,
        }
    }
}

/// Flags of `connections`.
#[derive(Debug, Clone, Args)]
pub struct ConnectionsArgs {
    /// Idle WebSockets to open and hold.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub sockets: u64,
    /// How many sockets to open per second at most.
    #[arg(long, default_value_t = 2000.0, value_parser = parse_rate)]
    pub rate: f64,
    /// Handshakes in progress at once at most.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub handshakes: u64,
    /// Give up on one socket's TCP connect and WebSocket handshake after this long.
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    pub handshake_timeout: Duration,
    /// How long to hold the sockets once they are open (e.g. 5, 30s).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub hold: Duration,
    /// PID of the server: its VmRSS is read from /proc before and while the sockets are held.
    #[arg(long, env = "HERALD_SERVER_PID")]
    pub server_pid: Option<u32>,
    /// While the sockets are held, submit jobs at this rate (per second) over one more socket and
    /// report their latency: how the server serves a working client while it holds the idle ones.
    #[arg(long, value_parser = parse_rate)]
    pub jobs_per_sec: Option<f64>,
    /// The input of those jobs (n!).
    #[arg(long, default_value_t = 10, requires = "jobs_per_sec")]
    pub n: u64,
}

/// Flags of `cancel`.
#[derive(Debug, Clone, Args)]
pub struct CancelArgs {
    /// Input of the first job; job k (from 0) computes (n - k)!, because the worker computes an n once
    /// and a job for an n already in hand would share that computation instead of running its own.
    /// Big enough that a job runs well past its first progress (250 ms).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub n: u64,
    /// Jobs submitted and cancelled, one after the other.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub jobs: u64,
    /// Wait between a job's first progress and its cancel (e.g. 0, 25ms). The first progress leaves the
    /// worker just after one of its checks for a cancel, so a cancel sent at once lands early in the
    /// gap to the next check; a delay moves it later in that gap.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub delay: Duration,
}

/// Reads a duration: a number of seconds (`5`, `2.5`) or a number with a unit (`500ms`, `5s`, `2m`).
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration such as 5, 5s, 500ms or 2m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit {other:?}: use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{raw:?}: {e}"))
}

fn parse_positive_duration(raw: &str) -> Result<Duration, String> {
    let duration = parse_duration(raw)?;
    if duration.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(duration)
}

fn parse_rate(raw: &str) -> Result<f64, String> {
    let raw = raw.trim();
    let number = raw.strip_suffix("/s").unwrap_or(raw);
    match number.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{raw:?} is not a positive rate such as 2000 or 2000/s"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "-1", "5 parsecs", "1e3"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_positive_duration("0s").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("2000/s"), Ok(2000.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn flags_parse_on_either_side_of_the_subcommand() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "herald-loadgen",
            "--json",
            "throughput",
            "--url",
            "http://127.0.0.1:9",
            "--window",
            "7",
        ])
        .unwrap();
        assert!(cli.common.json);
        assert_eq!(cli.common.url, "http://127.0.0.1:9");
        let Command::Throughput(args) = cli.command else {
            panic!("expected throughput");
        };
        assert_eq!((args.window, args.connections, args.jobs), (7, 50, 20_000));
    }

    #[test]
    fn connections_may_run_jobs_meanwhile() {
        let cli = Cli::try_parse_from(["herald-loadgen", "connections"]).unwrap();
        let Command::Connections(args) = cli.command else {
            panic!("expected connections");
        };
        assert_eq!((args.jobs_per_sec, args.n), (None, 10));
        let cli = Cli::try_parse_from([
            "herald-loadgen",
            "connections",
            "--jobs-per-sec",
            "100",
            "--n",
            "20",
        ])
        .unwrap();
        let Command::Connections(args) = cli.command else {
            panic!("expected connections");
        };
        assert_eq!((args.jobs_per_sec, args.n), (Some(100.0), 20));
        assert!(
            Cli::try_parse_from(["herald-loadgen", "connections", "--jobs-per-sec", "0"]).is_err()
        );
    }

    #[test]
    fn cancel_defaults_and_flags() {
        let cli = Cli::try_parse_from(["herald-loadgen", "cancel"]).unwrap();
        let Command::Cancel(args) = cli.command else {
            panic!("expected cancel");
        };
        assert_eq!(
            (args.n, args.jobs, args.delay),
            (1_000_000, 20, Duration::ZERO)
        );
        let cli = Cli::try_parse_from([
            "herald-loadgen",
            "cancel",
            "--jobs",
            "30",
            "--n",
            "500000",
            "--delay",
            "25ms",
        ])
        .unwrap();
        let Command::Cancel(args) = cli.command else {
            panic!("expected cancel");
        };
        assert_eq!(
            (args.n, args.jobs, args.delay),
            (500_000, 30, Duration::from_millis(25))
        );
        assert!(Cli::try_parse_from(["herald-loadgen", "cancel", "--jobs", "0"]).is_err());
    }
}
