//! Replays the kept corpus (corpus/<target>/) and the inputs that once
//! crashed a target (regressions/<target>/) through the targets' checks,
//! without libFuzzer: `cargo test` in fuzz/ (scripts/fuzz.sh --replay).

use std::fs;
use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut count = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.expect("entry").path()).collect();
        paths.sort();
        for path in paths {
            let data = fs::read(&path).expect("read input");
            eprintln!("{}", path.display());
            check(&data);
            count += 1;
        }
    }
    assert!(count > 0, "no inputs for {target}");
}

#[test]
fn reference_inputs() {
    replay("reference", lstore_fuzz::reference);
}

#[test]
fn document_inputs() {
    replay("document", lstore_fuzz::document);
}

#[test]
fn unpack_inputs() {
    replay("unpack", lstore_fuzz::unpack);
}
