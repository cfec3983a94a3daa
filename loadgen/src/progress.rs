//! Progress bars on stderr for long runs: drawn only for a person watching a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting to `len`, or a hidden one with `quiet` or when stderr is not a terminal (logs, pipes).
pub fn bar(len: u64, label: &str, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>11} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        )
        .expect("a valid progress template"),
    );
    bar.set_prefix(label.to_owned());
    // Redraws on a timer too, so a stalled run still shows its clock moving.
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
