//! Hostile and broken packages: every one is a typed error naming the file and the cause.

use std::fs;
use std::path::{Path, PathBuf};

use omnipack_coreml::blob::BlobError;
use omnipack_coreml::{ErrorKind, open};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/decode_step_ios16.mlpackage")
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// A copy of the fixture package, changed by `f`; returns what opening it says.
fn broken(f: impl FnOnce(&Path)) -> (omnipack_coreml::Error, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("m.mlpackage");
    copy_dir(&fixture(), &pkg);
    f(&pkg);
    let err = open(&pkg)
        .and_then(|m| m.facts().map(|_| ()))
        .expect_err("a broken package opens");
    let where_ = err
        .path
        .strip_prefix(&pkg)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| err.path.clone());
    (err, where_)
}

const WEIGHTS: &str = "Data/com.apple.CoreML/weights/weight.bin";
const MODEL: &str = "Data/com.apple.CoreML/model.mlmodel";

fn edit(pkg: &Path, rel: &str, f: impl FnOnce(&mut Vec<u8>)) {
    let p = pkg.join(rel);
    let mut b = fs::read(&p).unwrap();
    f(&mut b);
    fs::write(&p, b).unwrap();
}

fn replace(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let mut n = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            n += 1;
        }
        i += 1;
    }
    assert!(n > 0);
}

#[test]
fn truncated_blob_file() {
    let (e, at) = broken(|p| edit(p, WEIGHTS, |b| b.truncate(b.len() - 10)));
    assert_eq!(at, Path::new(WEIGHTS));
    assert!(
        matches!(
            e.kind,
            ErrorKind::Blob(BlobError::DataPastEnd { index: 34, .. })
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("weight.bin: is not a valid MIL blob storage file: blob 34:"),
        "{e}"
    );
}

#[test]
fn offsets_past_the_end() {
    let (e, _) = broken(|p| {
        edit(p, WEIGHTS, |b| {
            b[72..80].copy_from_slice(&(1u64 << 40).to_le_bytes())
        })
    });
    assert!(
        matches!(
            e.kind,
            ErrorKind::Blob(BlobError::DataPastEnd { index: 0, .. })
        ),
        "{e}"
    );
}

#[test]
fn records_out_of_order() {
    let (e, _) = broken(|p| {
        edit(p, WEIGHTS, |b| {
            b[80..88].copy_from_slice(&4096u64.to_le_bytes())
        })
    });
    assert!(
        matches!(
            e.kind,
            ErrorKind::Blob(BlobError::OutOfOrder { index: 0, .. })
        ),
        "{e}"
    );
}

#[test]
fn bad_sentinel_and_version() {
    let (e, _) = broken(|p| edit(p, WEIGHTS, |b| b[64] ^= 1));
    assert!(
        matches!(
            e.kind,
            ErrorKind::Blob(BlobError::Sentinel {
                index: 0,
                offset: 64,
                ..
            })
        ),
        "{e}"
    );
    let (e, _) = broken(|p| edit(p, WEIGHTS, |b| b[4] = 3));
    assert!(
        matches!(e.kind, ErrorKind::Blob(BlobError::Version { version: 3 })),
        "{e}"
    );
}

#[test]
fn huge_count() {
    let (e, _) = broken(|p| {
        edit(p, WEIGHTS, |b| {
            b[0..4].copy_from_slice(&u32::MAX.to_le_bytes())
        })
    });
    assert!(
        matches!(
            e.kind,
            ErrorKind::Blob(BlobError::CountTooLarge {
                count: u32::MAX,
                ..
            })
        ),
        "{e}"
    );
}

#[test]
fn counted_blob_missing() {
    // The header counts one blob more than the file holds.
    let (e, _) = broken(|p| edit(p, WEIGHTS, |b| b[0] += 1));
    assert!(
        matches!(
            e.kind,
            ErrorKind::Blob(BlobError::MissingRecord {
                index: 35,
                count: 36,
                ..
            })
        ),
        "{e}"
    );
}

#[test]
fn referenced_blob_missing() {
    // Drop the last blob (count - 1, file cut after the previous blob): the program still
    // refers to it.
    let (e, at) = broken(|p| {
        edit(p, WEIGHTS, |b| {
            let count = u32::from_le_bytes(b[0..4].try_into().unwrap());
            b[0..4].copy_from_slice(&(count - 1).to_le_bytes());
            // Find the last record: walk the records.
            let mut off = 64usize;
            let mut end = 64usize;
            for _ in 0..count - 1 {
                let size = u64::from_le_bytes(b[off + 8..off + 16].try_into().unwrap()) as usize;
                end = off + 64 + size;
                off = end.div_ceil(64) * 64;
            }
            b.truncate(end);
        })
    });
    assert_eq!(at, Path::new(WEIGHTS));
    assert!(
        matches!(&e.kind, ErrorKind::MissingBlob { file_name, .. } if file_name == "@model_path/weights/weight.bin"),
        "{e}"
    );
    assert!(
        e.to_string().contains("but no blob record starts there"),
        "{e}"
    );
}

#[test]
fn protobuf_that_does_not_decode() {
    let (e, at) = broken(|p| edit(p, MODEL, |b| b.truncate(b.len() / 2)));
    assert_eq!(at, Path::new(MODEL));
    assert!(matches!(e.kind, ErrorKind::Wire(_)), "{e}");
    // Valid wire format, wrong types: specificationVersion as a string.
    let (e, _) = broken(|p| fs::write(p.join(MODEL), [0x0a, 0x01, b'x']).unwrap());
    assert!(matches!(e.kind, ErrorKind::Decode(_)), "{e}");
    assert!(
        e.to_string()
            .contains("model.mlmodel: does not decode as a Core ML model"),
        "{e}"
    );
}

#[test]
fn blob_file_outside_the_package() {
    let (e, _) = broken(|p| {
        edit(p, MODEL, |b| {
            replace(
                b,
                b"@model_path/weights/weight.bin",
                b"@model_path/../../../etc/hosts",
            )
        })
    });
    assert!(matches!(e.kind, ErrorKind::BlobFileOutside { .. }), "{e}");
    let (e, at) = broken(|p| {
        edit(p, MODEL, |b| {
            replace(b, b"weights/weight.bin", b"weights/weight.bix")
        })
    });
    assert!(matches!(e.kind, ErrorKind::Io(_)), "{e}");
    assert_eq!(at, Path::new("Data/com.apple.CoreML/weights/weight.bix"));
}

#[test]
fn manifest_problems() {
    let (e, at) = broken(|p| fs::remove_file(p.join("Manifest.json")).unwrap());
    assert!(matches!(e.kind, ErrorKind::Io(_)), "{e}");
    assert_eq!(at, Path::new("Manifest.json"));
    let (e, _) = broken(|p| fs::write(p.join("Manifest.json"), "{").unwrap());
    assert!(matches!(e.kind, ErrorKind::Manifest(_)), "{e}");
    let (e, _) = broken(|p| {
        edit(p, "Manifest.json", |b| {
            let s = String::from_utf8(b.clone())
                .unwrap()
                .replace("com.apple.CoreML/model.mlmodel", "../../../../etc/passwd");
            *b = s.into_bytes();
        })
    });
    assert!(matches!(e.kind, ErrorKind::UnsafeItemPath { .. }), "{e}");
}

#[cfg(unix)]
#[test]
fn symbolic_links_are_not_followed() {
    let (e, _) = broken(|p| {
        let w = p.join("Data/com.apple.CoreML/weights");
        fs::rename(&w, p.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(p.join("elsewhere"), &w).unwrap();
    });
    assert!(matches!(e.kind, ErrorKind::NotADirectory), "{e}");
    let (e, _) = broken(|p| {
        let m = p.join(MODEL);
        fs::rename(&m, p.join("model.elsewhere")).unwrap();
        std::os::unix::fs::symlink(p.join("model.elsewhere"), &m).unwrap();
    });
    assert!(matches!(e.kind, ErrorKind::NotRegularFile), "{e}");
}

#[test]
fn not_a_model_at_all() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(&tmp.path().join("missing.mlpackage")).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Io(_)));
    let f = tmp.path().join("x.mlmodel");
    fs::write(&f, b"\xff\xff\xff").unwrap();
    assert!(matches!(open(&f).unwrap_err().kind, ErrorKind::Wire(_)));
}
