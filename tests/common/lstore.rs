//! Runs the real `lstore` binary against a private temporary root.

use super::image::{write_oci_layout, Image, LayoutNames};
use serde_json::Value;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use tempfile::TempDir;

pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// A store root under a temp dir, removed on drop.
pub struct Lstore {
    root: TempDir,
}

impl Default for Lstore {
    fn default() -> Self {
        Lstore::new()
    }
}

impl Lstore {
    pub fn new() -> Lstore {
        let root = tempfile::Builder::new()
            .prefix("lstore-root-")
            .tempdir()
            .expect("temp root");
        Lstore { root }
    }

    /// A store whose root is a fresh folder inside `parent` (a filesystem
    /// a test made).
    pub fn in_dir(parent: &Path) -> Lstore {
        let root = tempfile::Builder::new()
            .prefix("lstore-root-")
            .tempdir_in(parent)
            .expect("temp root");
        Lstore { root }
    }

    /// The store root (passed as `--root`).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// `lstore --root <root> ARGS…`, not started yet.
    pub fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lstore"));
        command
            .arg("--root")
            .arg(self.root())
            .args(args)
            .env_remove("LSTORE_ROOT")
            .env_remove("RUST_BACKTRACE");
        command
    }

    /// Starts a command in the background, its output captured.
    pub fn spawn<S: AsRef<OsStr>>(&self, args: &[S]) -> Child {
        self.command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lstore")
    }

    /// Waits for a spawned command; checks that it did not crash.
    pub fn wait<S: AsRef<OsStr>>(&self, args: &[S], child: Child) -> Output {
        let output = child.wait_with_output().expect("wait for lstore");
        let out = Output {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        assert_no_crash(args, &out);
        out
    }

    /// Runs `lstore --root <root> ARGS…` and returns what it printed.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let child = self.spawn(args);
        self.wait(args, child)
    }

    /// Runs a command that must succeed.
    pub fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let out = self.run(args);
        assert!(
            out.success(),
            "lstore {} failed ({}):\nstdout: {}\nstderr: {}",
            show_args(args),
            out.status,
            out.stdout,
            out.stderr
        );
        out
    }

    /// Runs a command that must fail with a non-zero status and one
    /// `error: ` line on stderr; returns that line.
    pub fn fails<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        assert!(
            !out.success(),
            "lstore {} succeeded but should have failed:\nstdout: {}\nstderr: {}",
            show_args(args),
            out.stdout,
            out.stderr
        );
        assert_one_line_error(&show_args(args), &out);
        out.stderr
            .trim_end()
            .lines()
            .last()
            .unwrap_or("")
            .to_string()
    }

    /// Runs a command that must succeed and print JSON on stdout.
    pub fn json<S: AsRef<OsStr>>(&self, args: &[S]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "lstore {} printed invalid JSON ({e}):\n{}",
                show_args(args),
                out.stdout
            )
        })
    }

    /// `lstore load -i PATH [--tag REF]`, which must succeed.
    pub fn load(&self, path: &Path, tag: Option<&str>) -> Output {
        let mut args: Vec<&OsStr> = vec![OsStr::new("load"), OsStr::new("-i"), path.as_os_str()];
        if let Some(tag) = tag {
            args.push(OsStr::new("--tag"));
            args.push(OsStr::new(tag));
        }
        self.ok(&args)
    }

    /// Loads `image` from an OCI layout written for it, tagged `name`.
    pub fn load_image(&self, image: &Image, name: &str) {
        let dir = tempfile::Builder::new()
            .prefix("lstore-layout-")
            .tempdir()
            .expect("layout dir");
        write_oci_layout(dir.path(), &[(image, LayoutNames::ref_name("src"))]);
        self.load(dir.path(), Some(name));
    }

    pub fn inspect(&self, reference: &str) -> Value {
        self.json(&["inspect", reference])
    }

    /// `images --format json` as a list of objects.
    pub fn images(&self) -> Vec<Value> {
        match self.json(&["images", "--format", "json"]) {
            Value::Array(items) => items,
            other => panic!("images --format json is not an array: {other}"),
        }
    }

    /// `repository:tag` of each tagged row of `images`, in its order.
    pub fn listed_references(&self) -> Vec<String> {
        self.images()
            .iter()
            .filter_map(|row| {
                Some(format!(
                    "{}:{}",
                    row["repository"].as_str()?,
                    row["tag"].as_str()?
                ))
            })
            .collect()
    }

    /// The `lowerdir` of `inspect REF`.
    pub fn lowerdir(&self, reference: &str) -> String {
        let inspect = self.inspect(reference);
        inspect["lowerdir"]
            .as_str()
            .unwrap_or_else(|| panic!("inspect {reference} has no lowerdir string: {inspect}"))
            .to_string()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    /// Names in `blobs/sha256/`.
    pub fn blobs(&self) -> Vec<String> {
        list(&self.path("blobs/sha256"))
    }

    /// Layer folders: names in `overlay2/` other than `l`.
    pub fn layer_dirs(&self) -> Vec<String> {
        list(&self.path("overlay2"))
            .into_iter()
            .filter(|n| n != "l")
            .collect()
    }

    /// Short links in `overlay2/l/`.
    pub fn short_links(&self) -> Vec<String> {
        list(&self.path("overlay2/l"))
    }

    /// Entries of `tmp/` and `ingest/`.
    pub fn unfinished(&self) -> Vec<String> {
        let mut out = Vec::new();
        for dir in ["tmp", "ingest"] {
            for name in list(&self.path(dir)) {
                out.push(format!("{dir}/{name}"));
            }
        }
        out
    }
}

/// Sorted names in `dir`; empty when it does not exist.
pub fn list(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

fn show_args<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A panic or a signal is never an acceptable way to fail.
fn assert_no_crash<S: AsRef<OsStr>>(args: &[S], out: &Output) {
    assert!(
        out.status.code().is_some(),
        "lstore {} was killed by a signal ({}):\nstderr: {}",
        show_args(args),
        out.status,
        out.stderr
    );
    assert!(
        !out.stderr.contains("panicked") && out.status.code() != Some(101),
        "lstore {} panicked:\n{}",
        show_args(args),
        out.stderr
    );
}

/// A failed command reports its error as one `error: …` line: the last
/// line of stderr, with no other error line or error chain around it
/// (progress lines before it are allowed).
pub fn assert_one_line_error(what: &str, out: &Output) {
    let stderr = out.stderr.trim_end();
    let last = stderr.lines().last().unwrap_or("");
    let other_errors = stderr.lines().rev().skip(1).any(|line| {
        let lower = line.trim_start().to_lowercase();
        lower.starts_with("error") || lower.starts_with("caused by") || lower.contains("backtrace")
    });
    assert!(
        last.starts_with("error: ") && last.len() > "error: ".len() && !other_errors,
        "lstore {what} must fail with one `error: …` line on stderr, got:\n{}",
        out.stderr
    );
}
