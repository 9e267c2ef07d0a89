//! Progress of layers for `load` and `pull`: one bar per layer when stderr
//! is a terminal, plain lines otherwise, nothing with `--quiet`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use lstore::{Descriptor, ImportProgress};

pub struct Progress {
    mode: Mode,
    bars: Mutex<Vec<Option<ProgressBar>>>,
    names: Mutex<Vec<String>>,
    fetched: AtomicU64,
    reused: AtomicU64,
    started: Instant,
}

enum Mode {
    Bars(MultiProgress),
    Lines,
    Quiet,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
        } else {
            Mode::Lines
        };
        Progress {
            mode,
            bars: Mutex::new(Vec::new()),
            names: Mutex::new(Vec::new()),
            fetched: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    fn name(&self, index: usize) -> String {
        self.names
            .lock()
            .ok()
            .and_then(|n| n.get(index).cloned())
            .unwrap_or_else(|| format!("layer {}", index + 1))
    }

    /// The closing line: bytes fetched, bytes reused, time.
    pub fn summary(&self, what: &str) {
        if self.mode == Mode::Quiet {
            return;
        }
        eprintln!(
            "{what}: {} read, {} already present, {:.2}s",
            crate::human(self.fetched.load(Ordering::Relaxed)),
            crate::human(self.reused.load(Ordering::Relaxed)),
            self.started.elapsed().as_secs_f64()
        );
    }
}

impl PartialEq for Mode {
    fn eq(&self, other: &Self) -> bool {
        matches!(
            (self, other),
            (Mode::Bars(_), Mode::Bars(_))
                | (Mode::Lines, Mode::Lines)
                | (Mode::Quiet, Mode::Quiet)
        )
    }
}

impl ImportProgress for Progress {
    fn layer_started(&self, index: usize, desc: Option<&Descriptor>, reused: bool) {
        let name = desc
            .map(|d| d.digest.short())
            .unwrap_or_else(|| format!("layer {}", index + 1));
        if let Ok(mut n) = self.names.lock() {
            if n.len() <= index {
                n.resize(index + 1, String::new());
            }
            n[index] = name.clone();
        }
        if reused {
            self.reused
                .fetch_add(desc.map(|d| d.size).unwrap_or(0), Ordering::Relaxed);
        }
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines => {
                if reused {
                    eprintln!("{name}: already present");
                } else {
                    eprintln!("{name}: reading");
                }
            }
            Mode::Bars(multi) => {
                let bar = multi.add(ProgressBar::new(desc.map(|d| d.size).unwrap_or(0)));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>12} {msg:<16} [{bar:30}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(name);
                if reused {
                    bar.set_message("already present");
                    bar.finish();
                } else {
                    bar.set_message("extracting");
                }
                if let Ok(mut bars) = self.bars.lock() {
                    if bars.len() <= index {
                        bars.resize(index + 1, None);
                    }
                    bars[index] = Some(bar);
                }
            }
        }
    }

    fn layer_bytes(&self, index: usize, bytes: u64) {
        self.fetched.fetch_add(bytes, Ordering::Relaxed);
        if let Mode::Bars(_) = self.mode {
            if let Some(Some(bar)) = self.bars.lock().ok().and_then(|b| b.get(index).cloned()) {
                bar.inc(bytes);
            }
        }
    }

    fn layer_done(&self, index: usize) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines => {
                let name = self.name(index);
                eprintln!("{name}: done");
            }
            Mode::Bars(_) => {
                if let Some(Some(bar)) = self.bars.lock().ok().and_then(|b| b.get(index).cloned()) {
                    if !bar.is_finished() {
                        bar.set_message("done");
                        bar.finish();
                    }
                }
            }
        }
    }
}
