//! The command line's common contract: `--root` before or after the
//! subcommand, `$LSTORE_ROOT`, and one `error: …` line with a non-zero
//! status for every failure, usage errors included.

mod common;

use common::image::write_oci_layout;
use common::lstore::assert_one_line_error;
use common::{scenes, scratch, ImageBuilder, LayoutNames, Lstore};
use std::process::Command;

const NAME: &str = "example.com/lstore/cli:1";

fn loaded_store() -> (tempfile::TempDir, Lstore) {
    let scratch = scratch();
    let store = Lstore::new();
    let image = ImageBuilder::new().layer(scenes::small_base()).build();
    let layout = scratch.path().join("layout");
    write_oci_layout(&layout, &[(&image, LayoutNames::containerd(NAME))]);
    store.load(&layout, None);
    (scratch, store)
}

fn lstore() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lstore"));
    command.env_remove("LSTORE_ROOT");
    command
}

#[test]
fn root_goes_before_or_after_the_subcommand() {
    let (_scratch, store) = loaded_store();
    let output = lstore()
        .args(["inspect", NAME, "--root"])
        .arg(store.root())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let inspect: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(inspect, store.inspect(NAME));
}

#[test]
fn lstore_root_names_the_root_without_the_flag() {
    let (_scratch, store) = loaded_store();
    let output = lstore()
        .args(["images", "--format", "json"])
        .env("LSTORE_ROOT", store.root())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let images: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(images.as_array().map(Vec::len), Some(1), "{images}");
    // The flag wins over the variable.
    let other = Lstore::new();
    let output = lstore()
        .args(["images", "--format", "json", "--root"])
        .arg(other.root())
        .env("LSTORE_ROOT", store.root())
        .output()
        .unwrap();
    let images: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(images, serde_json::json!([]));
}

#[test]
fn lstore_ignore_chown_errors_takes_the_usual_boolean_words() {
    let (_scratch, store) = loaded_store();
    for value in ["1", "0", "true", "false", "yes", "no"] {
        let output = lstore()
            .args(["images", "--format", "json", "--root"])
            .arg(store.root())
            .env("LSTORE_IGNORE_CHOWN_ERRORS", value)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "LSTORE_IGNORE_CHOWN_ERRORS={value}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn unknown_references_fail_with_one_error_line() {
    let (scratch, store) = loaded_store();
    let missing = "example.com/lstore/missing:1";
    let saved = scratch.path().join("saved.tar");
    for args in [
        vec!["inspect", missing],
        vec!["rmi", missing],
        vec!["tag", missing, "example.com/lstore/other:1"],
        vec!["save", "-o", saved.to_str().unwrap(), missing],
        vec!["inspect", "Not/A/Valid:Reference!"],
        vec!["tag", NAME, "bad reference!"],
    ] {
        store.fails(&args);
    }
    assert!(!saved.exists(), "a failed save leaves no file");
    assert_eq!(store.images().len(), 1);
}

#[test]
fn usage_errors_are_one_error_line_too() {
    let store = Lstore::new();
    for args in [
        vec!["frobnicate"],
        vec!["load"],
        vec!["load", "-i", "/nonexistent", "--bogus"],
        vec!["images", "--format", "yaml"],
    ] {
        let out = store.run(&args);
        assert!(!out.success(), "lstore {args:?} succeeded");
        assert_one_line_error(&args.join(" "), &out);
    }
}

#[test]
fn a_malformed_digest_is_called_invalid_not_unknown() {
    let (_scratch, store) = loaded_store();
    let too_long = format!("sha256:{}", "a".repeat(65));
    let not_hex = format!("sha256:{}", "g".repeat(64));
    for word in [too_long.as_str(), not_hex.as_str()] {
        for command in [
            &["inspect"][..],
            &["rmi"],
            &["tag", "x:1"],
            &["save", "-o", "/dev/null"],
        ] {
            let mut args: Vec<&str> = command.to_vec();
            args.insert(1, word);
            let stderr = store.fails(&args);
            assert!(stderr.contains("invalid digest"), "{args:?}: {stderr}");
        }
    }
    // A well-formed digest nobody has is unknown, not invalid.
    let unknown = format!("sha256:{}", "b".repeat(64));
    let stderr = store.fails(&["inspect", unknown.as_str()]);
    assert!(!stderr.contains("invalid"), "{stderr}");
}

/// A `--root` that names a file is "not a directory", not "File exists".
#[test]
fn a_root_that_is_a_file_is_not_a_directory() {
    let dir = scratch();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a store").unwrap();
    let out = lstore()
        .arg("--root")
        .arg(&file)
        .args(["images"])
        .output()
        .unwrap();
    let out = common::lstore::Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!out.success());
    assert_one_line_error("--root FILE images", &out);
    assert!(out.stderr.contains("not a directory"), "{}", out.stderr);
    assert!(!out.stderr.contains("File exists"), "{}", out.stderr);
    assert_eq!(std::fs::read(&file).unwrap(), b"not a store");
}
