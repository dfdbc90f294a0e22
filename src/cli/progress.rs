//! Progress of a training run on stderr: a bar (indicatif) on a terminal, plain lines at
//! every tenth of the run otherwise (logs, CI, pipes).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    /// The last tenth of the run a plain line was printed for.
    last_tenth: u64,
}

impl Progress {
    pub fn new(label: &str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("  {prefix:<22} [{bar:24}] {pos:>5}/{len} {msg} {eta} left")
                    .expect("a valid template")
                    .progress_chars("#>."),
            );
            bar.set_prefix(label.to_string());
            bar
        });
        Progress {
            bar,
            label: label.to_string(),
            total,
            last_tenth: 0,
        }
    }

    /// Step `pos` of the run is done; `msg` says how it goes (loss, recall).
    pub fn update(&mut self, pos: u64, msg: String) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(pos);
                bar.set_message(msg);
            }
            None => {
                let tenth = pos * 10 / self.total.max(1);
                if tenth > self.last_tenth || pos == self.total {
                    self.last_tenth = tenth;
                    eprintln!("  {:<22} {pos:>5}/{} {msg}", self.label, self.total);
                }
            }
        }
    }

    /// A line of its own (an evaluation, a checkpoint), above the bar on a terminal.
    pub fn println(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// The run is over; `msg` closes its line.
    pub fn finish(&self, msg: String) {
        match &self.bar {
            Some(bar) => bar.finish_with_message(msg),
            None => eprintln!("  {:<22} done: {msg}", self.label),
        }
    }
}
