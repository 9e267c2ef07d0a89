//! `lstore bench`: how fast the store takes in one image, measured as a
//! user meets it. Each run is a fresh `lstore load` (an archive or layout)
//! or `lstore pull` (a reference) into an empty store on a scratch
//! filesystem: a tmpfs made for the benchmark, or a directory given.
//!
//! Each run is a child process, timed from start to exit, whose peak RSS is
//! read from `wait4`'s resource usage. A child, not a call in this process:
//! the peak RSS of one process never goes down, so in-process runs could
//! not be told apart, and each run then pays what a user's command pays
//! (opening the database, starting its threads). Cold runs write back and
//! drop the page, dentry and inode caches first (the input is read from its
//! disk); warm runs only write back (the input is in memory).

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::layers::remove_tree;
use crate::store::{Store, StoreOptions};

/// Where the scratch stores live.
#[derive(Debug, Clone)]
pub enum Scratch {
    /// A tmpfs of this size (`8g`, `512m`: the kernel's `size=` option),
    /// mounted for the benchmark and unmounted after it.
    Tmpfs {
        /// The tmpfs size.
        size: String,
    },
    /// A fresh folder inside this directory (its filesystem is measured).
    Dir(PathBuf),
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// A docker-archive, an OCI layout (directory or tar), or else an image
    /// reference to pull.
    pub input: String,
    /// Where the scratch stores live.
    pub scratch: Scratch,
    /// Runs with cold caches (page cache dropped before each; needs root).
    pub cold: usize,
    /// Runs with warm caches, after the cold ones.
    pub warm: usize,
    /// Extra arguments of `lstore pull` (`--plain-http`, `--platform P`).
    pub pull_args: Vec<String>,
    /// The `lstore` binary each run starts.
    pub lstore: PathBuf,
}

/// Cold or warm caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    /// The page cache dropped before the run.
    Cold,
    /// The input in the page cache.
    Warm,
}

/// One run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Run {
    /// Cold or warm.
    pub kind: RunKind,
    /// Wall-clock seconds of the command.
    pub seconds: f64,
    /// Uncompressed layer tar bytes per second, in MB (10^6).
    pub tar_mb_per_s: f64,
    /// Compressed layer blob bytes per second, in MB.
    pub blob_mb_per_s: f64,
    /// Extracted entries per second.
    pub files_per_s: f64,
    /// Peak resident memory of the lstore process.
    pub peak_rss_bytes: u64,
}

/// The median run of one kind.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Median {
    /// Cold or warm.
    pub kind: RunKind,
    /// Runs of this kind.
    pub runs: usize,
    /// The median run's seconds.
    pub seconds: f64,
    /// Its uncompressed tar MB per second.
    pub tar_mb_per_s: f64,
    /// Its compressed blob MB per second.
    pub blob_mb_per_s: f64,
    /// Its extracted entries per second.
    pub files_per_s: f64,
}

/// What one run stores (every run stores the same).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ImageFigures {
    /// Images stored.
    pub images: usize,
    /// Distinct layers.
    pub layers: usize,
    /// Compressed layer blobs, as distributed.
    pub blob_bytes: u64,
    /// Uncompressed layer tars.
    pub tar_bytes: u64,
    /// Entries in the extracted layers (files, folders, links, devices).
    pub files: u64,
}

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Machine {
    /// CPUs this process may run on.
    pub cores: usize,
    /// The CPU model, when the system says.
    pub cpu: Option<String>,
    /// Physical memory, when the system says.
    pub memory_bytes: Option<u64>,
    /// The kernel release.
    pub kernel: String,
}

/// Where the scratch stores were.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScratchInfo {
    /// The folder the scratch stores were made in.
    pub path: String,
    /// The filesystem type (`tmpfs`, `ext4`, …).
    pub filesystem: String,
    /// The tmpfs size asked for; null for a directory given.
    pub size: Option<String>,
}

/// `lstore bench --format json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BenchReport {
    /// The command each run ran (without `--root`).
    pub command: String,
    /// Where the scratch stores were.
    pub store_on: ScratchInfo,
    /// The machine the figures come from.
    pub machine: Machine,
    /// The version of the lstore library that ran the benchmark.
    pub lstore_version: String,
    /// What each run stores.
    pub image: ImageFigures,
    /// Every run, in order.
    pub runs: Vec<Run>,
    /// The median run of each kind.
    pub medians: Vec<Median>,
}

/// Runs the benchmark.
pub fn run(opts: &BenchOptions) -> Result<BenchReport> {
    if opts.cold + opts.warm == 0 {
        return Err(Error::Invalid(
            "no runs asked for (--cold 0 --warm 0)".into(),
        ));
    }
    let args = run_args(opts)?;
    let scratch = ScratchDir::make(&opts.scratch)?;
    let store = scratch.path.join("store");
    let log = scratch.path.join("lstore.log");
    let kinds = std::iter::repeat_n(RunKind::Cold, opts.cold)
        .chain(std::iter::repeat_n(RunKind::Warm, opts.warm));
    let mut timed = Vec::new();
    for kind in kinds {
        timed.push((kind, one_run(opts, &args, &store, &log, kind)?));
    }
    let image = figures(&store)?;
    let runs: Vec<Run> = timed
        .into_iter()
        .map(|(kind, (seconds, peak_rss_bytes))| {
            let (tar_mb_per_s, blob_mb_per_s, files_per_s) = rates(&image, seconds);
            Run {
                kind,
                seconds,
                tar_mb_per_s,
                blob_mb_per_s,
                files_per_s,
                peak_rss_bytes,
            }
        })
        .collect();
    let medians = [RunKind::Cold, RunKind::Warm]
        .into_iter()
        .filter_map(|kind| median(&image, &runs, kind))
        .collect();
    Ok(BenchReport {
        command: format!("lstore {}", args.join(" ")),
        store_on: ScratchInfo {
            path: scratch.path.display().to_string(),
            filesystem: filesystem_name(&scratch.path),
            size: match &opts.scratch {
                Scratch::Tmpfs { size } => Some(size.clone()),
                Scratch::Dir(_) => None,
            },
        },
        machine: machine(),
        lstore_version: env!("CARGO_PKG_VERSION").to_string(),
        image,
        runs,
        medians,
    })
}

/// `load -q -i PATH` for a file or folder that exists, else `pull -q REF`.
fn run_args(opts: &BenchOptions) -> Result<Vec<String>> {
    let path = Path::new(&opts.input);
    if path.exists() {
        let path = fs::canonicalize(path).ctx(|| format!("resolve {}", path.display()))?;
        return Ok(vec![
            "load".into(),
            "-q".into(),
            "-i".into(),
            path.display().to_string(),
        ]);
    }
    crate::reference::Reference::parse(&opts.input).map_err(|e| {
        Error::Invalid(format!(
            "{}: neither a file or folder that exists nor an image reference ({e})",
            opts.input
        ))
    })?;
    let mut args = vec!["pull".to_string(), "-q".into()];
    args.extend(opts.pull_args.iter().cloned());
    args.push(opts.input.clone());
    Ok(args)
}

/// One run into an empty store: (seconds, peak RSS in bytes).
fn one_run(
    opts: &BenchOptions,
    args: &[String],
    store: &Path,
    log: &Path,
    kind: RunKind,
) -> Result<(f64, u64)> {
    if fs::symlink_metadata(store).is_ok() {
        remove_tree(store)?;
    }
    rustix::fs::sync();
    if kind == RunKind::Cold {
        fs::write("/proc/sys/vm/drop_caches", "3\n").map_err(|e| {
            Error::io(
                "cold runs drop the page cache (as root; --cold 0 for warm runs only)",
                e,
            )
        })?;
    }
    let log_file = fs::File::create(log).ctx(|| format!("create {}", log.display()))?;
    let started = Instant::now();
    let child = Command::new(&opts.lstore)
        .arg("--root")
        .arg(store)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .ctx(|| format!("start {}", opts.lstore.display()))?;
    let (exit, peak_rss_bytes) = wait_with_peak_rss(child)?;
    let seconds = started.elapsed().as_secs_f64();
    if exit != Some(0) {
        let output = fs::read_to_string(log).unwrap_or_default();
        let last = output.lines().last().unwrap_or("no output");
        let last = last.strip_prefix("error: ").unwrap_or(last);
        let status = exit.map_or("killed by a signal".to_string(), |c| format!("exit {c}"));
        return Err(Error::Invalid(format!(
            "lstore {} failed ({status}): {last}",
            args.join(" ")
        )));
    }
    Ok((seconds, peak_rss_bytes))
}

/// Waits for `child` and returns its exit code (None: a signal) and its
/// peak RSS in bytes. std's `wait` does not give the resource usage.
fn wait_with_peak_rss(child: std::process::Child) -> Result<(Option<i32>, u64)> {
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain integers, for which all zeroes is a value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers are to live locals of the right types; the
        // pid is our own child, not waited for by anyone else.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::io("wait for lstore", e));
        }
    }
    // Reaped: dropping the handle only closes its (unused) pipes.
    drop(child);
    let exit = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    // Linux gives ru_maxrss in KiB.
    Ok((exit, u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024))
}

/// What the last run stored: distinct layers, their sizes and entries.
fn figures(store: &Path) -> Result<ImageFigures> {
    let store = Store::open(store, StoreOptions::default())?;
    let records = store.image_records()?;
    let mut figures = ImageFigures {
        images: records.len(),
        ..ImageFigures::default()
    };
    let mut seen = std::collections::BTreeSet::new();
    for layer in records.values().flat_map(|i| i.layers.iter()) {
        if !seen.insert(layer.chain_id) {
            continue;
        }
        figures.layers += 1;
        figures.tar_bytes += layer.size;
        figures.blob_bytes += layer.compressed_size;
        figures.files += count_entries(&store.layer_store().diff_dir(&layer.chain_id));
    }
    Ok(figures)
}

/// Entries below `dir` (not `dir` itself), never following symlinks.
fn count_entries(dir: &Path) -> u64 {
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(entries) = fs::read_dir(&p) else {
            continue;
        };
        for e in entries.flatten() {
            count += 1;
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    count
}

/// (tar MB/s, blob MB/s, files/s) of a run of `seconds`.
fn rates(image: &ImageFigures, seconds: f64) -> (f64, f64, f64) {
    // A run too short for the clock still divides by something.
    let s = seconds.max(1e-6);
    (
        image.tar_bytes as f64 / s / 1e6,
        image.blob_bytes as f64 / s / 1e6,
        image.files as f64 / s,
    )
}

fn median(image: &ImageFigures, runs: &[Run], kind: RunKind) -> Option<Median> {
    let mut secs: Vec<f64> = runs
        .iter()
        .filter(|r| r.kind == kind)
        .map(|r| r.seconds)
        .collect();
    if secs.is_empty() {
        return None;
    }
    secs.sort_by(f64::total_cmp);
    let n = secs.len();
    let seconds = if n % 2 == 1 {
        secs[n / 2]
    } else {
        (secs[n / 2 - 1] + secs[n / 2]) / 2.0
    };
    let (tar_mb_per_s, blob_mb_per_s, files_per_s) = rates(image, seconds);
    Some(Median {
        kind,
        runs: n,
        seconds,
        tar_mb_per_s,
        blob_mb_per_s,
        files_per_s,
    })
}

/// The scratch folder; unmounted (a tmpfs) and removed when dropped.
struct ScratchDir {
    path: PathBuf,
    mounted: bool,
}

impl ScratchDir {
    fn make(scratch: &Scratch) -> Result<ScratchDir> {
        let (parent, size) = match scratch {
            Scratch::Tmpfs { size } => (std::env::temp_dir(), Some(size)),
            Scratch::Dir(dir) => (dir.clone(), None),
        };
        let path = tempfile::Builder::new()
            .prefix("lstore-bench-")
            .tempdir_in(&parent)
            .ctx(|| format!("create a folder in {}", parent.display()))?
            .keep();
        let mut dir = ScratchDir {
            path,
            mounted: false,
        };
        if let Some(size) = size {
            let data = CString::new(format!("size={size},mode=0700"))
                .map_err(|_| Error::Invalid(format!("invalid tmpfs size {size:?}")))?;
            rustix::mount::mount(
                "tmpfs",
                &dir.path,
                "tmpfs",
                rustix::mount::MountFlags::empty(),
                data.as_c_str(),
            )
            .map_err(|e| {
                Error::io(
                    format!(
                        "mount a tmpfs of size {size} on {} (as root; or give a folder with --dir)",
                        dir.path.display()
                    ),
                    e.into(),
                )
            })?;
            dir.mounted = true;
        }
        Ok(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if self.mounted {
            // Lazily: a run's mount left below would otherwise keep it busy.
            let _ = rustix::mount::unmount(&self.path, rustix::mount::UnmountFlags::DETACH);
            let _ = fs::remove_dir(&self.path);
        } else {
            let _ = remove_tree(&self.path);
        }
    }
}

/// The filesystem type of `path`, by its magic number.
fn filesystem_name(path: &Path) -> String {
    let Ok(fs) = rustix::fs::statfs(path) else {
        return "unknown".into();
    };
    // The word's type differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    let magic = fs.f_type as i64 as u64;
    match magic {
        0x0102_1994 => "tmpfs".into(),
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x794C_7630 => "overlay".into(),
        0xF2F5_2010 => "f2fs".into(),
        0x2FC1_2FC1 => "zfs".into(),
        0x6969 => "nfs".into(),
        other => format!("0x{other:x}"),
    }
}

fn machine() -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu: cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string()),
        memory_bytes: meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024),
        kernel: rustix::system::uname()
            .release()
            .to_string_lossy()
            .into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(kind: RunKind, seconds: f64) -> Run {
        Run {
            kind,
            seconds,
            tar_mb_per_s: 0.0,
            blob_mb_per_s: 0.0,
            files_per_s: 0.0,
            peak_rss_bytes: 0,
        }
    }

    #[test]
    fn medians_are_per_kind_and_rates_follow_from_the_seconds() {
        let image = ImageFigures {
            images: 1,
            layers: 2,
            blob_bytes: 1_000_000,
            tar_bytes: 4_000_000,
            files: 100,
        };
        let runs = [
            run_of(RunKind::Cold, 4.0),
            run_of(RunKind::Cold, 1.0),
            run_of(RunKind::Cold, 2.0),
            run_of(RunKind::Warm, 1.0),
            run_of(RunKind::Warm, 3.0),
        ];
        let cold = median(&image, &runs, RunKind::Cold).unwrap();
        assert_eq!((cold.runs, cold.seconds), (3, 2.0));
        assert_eq!(
            (cold.tar_mb_per_s, cold.blob_mb_per_s, cold.files_per_s),
            (2.0, 0.5, 50.0)
        );
        let warm = median(&image, &runs, RunKind::Warm).unwrap();
        assert_eq!((warm.runs, warm.seconds), (2, 2.0));
        assert!(median(&image, &runs[..3], RunKind::Warm).is_none());
    }

    #[test]
    fn entries_are_counted_below_the_folder_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("a/root")).unwrap();
        assert_eq!(count_entries(dir.path()), 4);
    }
}
