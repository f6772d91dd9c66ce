//! The progress bar a scenario shows on stderr while it runs (indicatif).
//! Hidden when stderr is not a terminal, so logs and CI output stay clean.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps named `what`, e.g. seconds of load or changes committed.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style =
        ProgressStyle::with_template("  {msg:<28} [{bar:30}] {pos}/{len} {elapsed}").expect("a valid template").progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar
}
