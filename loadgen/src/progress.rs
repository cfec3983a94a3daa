//! Progress bars on stderr for long runs: drawn only for a person watching a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressState, ProgressStyle};

/// A bar counting to `len`, or a hidden one with `quiet` or when stderr is not a terminal (logs, pipes).
pub fn bar(len: u64, label: &str, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>11} [{elapsed_precise}] {wide_bar} {pos}/{len} ({rate}, eta {eta})",
        )
        .expect("a valid progress template")
        // The built-in {per_sec} prints four decimals; whole units per second read better.
        .with_key(
            "rate",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", state.per_sec());
            },
        ),
    );
    bar.set_prefix(label.to_owned());
    // Redraws on a timer too, so a stalled run still shows its clock moving.
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
