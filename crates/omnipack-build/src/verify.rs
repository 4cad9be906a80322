//! `omnipack verify OUT_DIR`: re-hashes every bundle zip, every file inside it and every
//! asset-pack folder against `mobile_packager_summary.json` and each `bundle.json`.
//! Also the bundle-zip and summary descriptions used by `omnipack inspect`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use omnipack_summary::{BundleEntry, BundleManifest, SUMMARY_FILE, Summary};
use rayon::prelude::*;

use crate::bundle_zip::{BUNDLE_JSON, DATA_ALIGNMENT, read_zip_entries, read_zip_entry};
use crate::fsutil::{is_safe_relative, walk_files};
use crate::output::{APP_DIR, PRIVATE_DIR};
use omnipack_quant::{digest_file, sha256_bytes};

/// What `verify` found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Bundles checked.
    pub bundles: usize,
    /// Files checked (zips, entries, asset-pack files).
    pub files: usize,
    /// Every mismatch, each naming the file and what differs.
    pub mismatches: Vec<String>,
}

/// Why verification could not even start.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// No readable summary.
    #[error("{path}: {message}")]
    Summary { path: String, message: String },
}

/// Largest `bundle.json` read.
const MAX_BUNDLE_JSON: u64 = 16 << 20;

/// Reads and parses a summary file.
pub fn read_summary(path: &Path) -> Result<Summary, VerifyError> {
    let err = |message: String| VerifyError::Summary {
        path: path.display().to_string(),
        message,
    };
    let meta = fs::metadata(path).map_err(|e| err(format!("cannot read the summary: {e}")))?;
    if meta.len() > 256 << 20 {
        return Err(err("larger than 256 MiB: not a summary".into()));
    }
    let bytes = fs::read(path).map_err(|e| err(e.to_string()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| err(format!("not a mobile_packager_summary.json: {e}")))
}

/// Verifies the output folder `out`.
pub fn verify(out: &Path) -> Result<VerifyReport, VerifyError> {
    let summary = read_summary(&out.join(SUMMARY_FILE))?;
    let mut report = VerifyReport {
        bundles: summary.bundles.len(),
        ..Default::default()
    };
    if out.join(PRIVATE_DIR).join("swap").join("READY").exists() {
        report.mismatches.push(format!(
            "{}: a build was interrupted while installing its output; run the build again to finish it",
            out.display()
        ));
    }
    report.mismatches.extend(check_summary(&summary));
    let results: Vec<(usize, Vec<String>)> = summary
        .bundles
        .par_iter()
        .map(|b| verify_bundle(out, &summary, b))
        .collect();
    for (n, m) in results {
        report.files += n;
        report.mismatches.extend(m);
    }
    // Nothing unexpected next to the listed bundles and packs.
    let zips: BTreeSet<String> = summary.bundles.iter().map(|b| b.file.clone()).collect();
    if let Ok(files) = walk_files(&out.join("bundles")) {
        for f in files {
            let rel = format!("bundles/{f}");
            if !zips.contains(&rel) {
                report
                    .mismatches
                    .push(format!("{rel}: not listed in {SUMMARY_FILE}"));
            }
        }
    }
    let packs: BTreeSet<&str> = summary.bundles.iter().map(|b| b.id.as_str()).collect();
    if let Ok(rd) = fs::read_dir(out.join("asset-packs")) {
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for n in names {
            if !packs.contains(n.as_str()) {
                report
                    .mismatches
                    .push(format!("asset-packs/{n}: not listed in {SUMMARY_FILE}"));
            }
        }
    }
    report
        .mismatches
        .extend(check_app_folder(out, &mut report.files));
    Ok(report)
}

/// `OUT/app/`: exactly a byte-identical copy of the summary and the Swift types this omnipack
/// generates for it.
fn check_app_folder(out: &Path, files: &mut usize) -> Vec<String> {
    let mut m = Vec::new();
    let app = out.join(APP_DIR);
    let summary = fs::read(out.join(SUMMARY_FILE)).unwrap_or_default();
    let expected: [(&str, Option<Vec<u8>>); 2] = [
        (SUMMARY_FILE, Some(summary)),
        (
            omnipack_summary::swift::SWIFT_FILE,
            omnipack_summary::swift::summary_swift()
                .ok()
                .map(String::into_bytes),
        ),
    ];
    for (name, want) in &expected {
        let rel = format!("{APP_DIR}/{name}");
        *files += 1;
        match (fs::read(app.join(name)), want) {
            (Err(e), _) => m.push(format!("{rel}: {e}")),
            (Ok(got), Some(want)) if got == *want => {}
            (Ok(_), _) if *name == SUMMARY_FILE => {
                m.push(format!("{rel}: differs from {SUMMARY_FILE}"))
            }
            (Ok(_), _) => m.push(format!(
                "{rel}: differs from the Swift types this omnipack generates for the summary"
            )),
        }
    }
    if let Ok(found) = walk_files(&app) {
        for f in found {
            if !expected.iter().any(|(n, _)| *n == f) {
                m.push(format!("{APP_DIR}/{f}: not written by omnipack"));
            }
        }
    }
    m
}

/// What the summary's own fields must agree on: unique bundle ids, tiers naming listed
/// bundles, and each tier's memory arithmetic (README, "Memory model"): `peak_bytes` is the sum of
/// its parts, `headroom_bytes = memory_limit - peak`, `required_bytes = peak + min_headroom`,
/// `fits` iff `required_bytes <= memory_limit`. An app decides what to load from these numbers, so a hand-edited summary
/// must not verify.
fn check_summary(summary: &Summary) -> Vec<String> {
    let mut m = Vec::new();
    let mut ids = BTreeSet::new();
    for b in &summary.bundles {
        if !ids.insert(b.id.as_str()) {
            m.push(format!("{SUMMARY_FILE}: bundle `{}` is listed twice", b.id));
        }
    }
    let mut tiers = BTreeSet::new();
    for t in &summary.tiers {
        let at = format!("{SUMMARY_FILE}: tier `{}`", t.name);
        if !tiers.insert(t.name.as_str()) {
            m.push(format!("{at} is listed twice"));
        }
        let mut seen = BTreeSet::new();
        for id in &t.bundles {
            if !ids.contains(id.as_str()) {
                m.push(format!(
                    "{at} loads bundle `{id}`, which is not in `bundles`"
                ));
            } else if !seen.insert(id.as_str()) {
                m.push(format!("{at} loads bundle `{id}` twice"));
            }
        }
        let mem = &t.memory;
        let sum = [
            mem.runtime_overhead_bytes,
            mem.weights_resident_bytes,
            mem.activations_bytes,
            mem.kv_cache_bytes,
            mem.lazy_peak_bytes,
        ]
        .iter()
        .fold(0u64, |a, b| a.saturating_add(*b));
        if sum != mem.peak_bytes {
            m.push(format!(
                "{at}: peak_bytes {} is not the sum of its parts ({sum})",
                mem.peak_bytes
            ));
        }
        let headroom = (i128::from(t.memory_limit_bytes) - i128::from(mem.peak_bytes))
            .clamp(i128::from(i64::MIN), i128::from(i64::MAX));
        if i128::from(mem.headroom_bytes) != headroom {
            m.push(format!(
                "{at}: headroom_bytes {} is not memory_limit_bytes - peak_bytes ({headroom})",
                mem.headroom_bytes
            ));
        }
        let required = mem.peak_bytes.saturating_add(mem.min_headroom_bytes);
        if t.required_bytes != required {
            m.push(format!(
                "{at}: required_bytes {} is not peak_bytes + min_headroom_bytes ({required})",
                t.required_bytes
            ));
        }
        let fits = required <= t.memory_limit_bytes;
        if t.fits != fits {
            m.push(format!(
                "{at}: fits is {}, but peak_bytes + min_headroom_bytes {} memory_limit_bytes",
                t.fits,
                if fits { "<=" } else { ">" }
            ));
        }
    }
    m
}

fn verify_bundle(out: &Path, summary: &Summary, b: &BundleEntry) -> (usize, Vec<String>) {
    let mut m = Vec::new();
    let mut n = 0;
    if !is_safe_relative(&b.file) || !is_safe_relative(&b.id) || b.id.contains('/') {
        m.push(format!(
            "bundle `{}`: unsafe path `{}` in the summary",
            b.id, b.file
        ));
        return (n, m);
    }
    let zip = out.join(&b.file);
    n += 1;
    match digest_file(&zip) {
        Err(e) => {
            m.push(format!("{}: {e}", b.file));
            return (n, m);
        }
        Ok(d) => {
            let (sha, size) = (d.sha256, d.size);
            if size != b.size_bytes {
                m.push(format!(
                    "{}: {size} bytes, the summary says {}",
                    b.file, b.size_bytes
                ));
            }
            if sha != b.sha256 {
                m.push(format!(
                    "{}: sha256 {sha}, the summary says {}",
                    b.file, b.sha256
                ));
            }
        }
    }
    match read_zip_entries(&zip) {
        Err(e) => m.push(e),
        Ok(entries) => {
            n += entries.len();
            if entries.first().map(|e| e.path.as_str()) != Some(BUNDLE_JSON) {
                m.push(format!(
                    "{}: `{BUNDLE_JSON}` is not the first entry",
                    b.file
                ));
            }
            let listed: BTreeSet<&str> = b.files.iter().map(|f| f.path.as_str()).collect();
            for e in &entries {
                match b.files.iter().find(|f| f.path == e.path) {
                    None => m.push(format!(
                        "{}: entry `{}` is not listed in the summary",
                        b.file, e.path
                    )),
                    Some(f) => {
                        if f.sha256 != e.sha256 || f.size_bytes != e.size {
                            m.push(format!(
                                "{}: entry `{}` has {} bytes with sha256 {}, the summary says {} bytes with sha256 {}",
                                b.file, e.path, e.size, e.sha256, f.size_bytes, f.sha256
                            ));
                        }
                    }
                }
                if e.path.ends_with(".safetensors")
                    && (!e.stored || e.data_start % DATA_ALIGNMENT as u64 != 0)
                {
                    m.push(format!(
                        "{}: entry `{}` is not stored uncompressed at a 16 KiB boundary",
                        b.file, e.path
                    ));
                }
            }
            let present: BTreeSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
            for f in listed.difference(&present) {
                m.push(format!(
                    "{}: entry `{f}` listed in the summary is missing",
                    b.file
                ));
            }
            match read_zip_entry(&zip, BUNDLE_JSON, MAX_BUNDLE_JSON).and_then(|bytes| {
                serde_json::from_slice::<BundleManifest>(&bytes)
                    .map_err(|e| format!("{}: {BUNDLE_JSON}: {e}", b.file))
            }) {
                Err(e) => m.push(e),
                Ok(bj) => {
                    if bj.bundle_id != b.id
                        || bj.component != b.component
                        || bj.role != b.role
                        || bj.runtime != b.runtime
                        || bj.quantization != b.quantization
                    {
                        m.push(format!(
                            "{}: {BUNDLE_JSON} describes another bundle than the summary",
                            b.file
                        ));
                    }
                    for f in &bj.files {
                        let e = entries.iter().find(|e| e.path == f.path);
                        match e {
                            None => m.push(format!("{}: `{}` listed in {BUNDLE_JSON} is missing", b.file, f.path)),
                            Some(e) if e.sha256 != f.sha256 || e.size != f.size_bytes => m.push(format!(
                                "{}: entry `{}` does not match {BUNDLE_JSON} (sha256 {}, expected {})",
                                b.file, f.path, e.sha256, f.sha256
                            )),
                            Some(_) => {}
                        }
                    }
                    if bj.files.len() + 1 != entries.len() {
                        m.push(format!(
                            "{}: {} entries, {BUNDLE_JSON} lists {} files besides itself",
                            b.file,
                            entries.len(),
                            bj.files.len()
                        ));
                    }
                }
            }
        }
    }
    // The asset pack: Manifest.json and exactly the bundle's files.
    let pack = out.join("asset-packs").join(&b.id);
    let manifest_rel = format!("asset-packs/{}/Manifest.json", b.id);
    if b.asset_pack.manifest != manifest_rel {
        m.push(format!(
            "bundle `{}`: asset_pack.manifest is `{}`, expected `{manifest_rel}`",
            b.id, b.asset_pack.manifest
        ));
    }
    n += 1;
    let expected_pack_id =
        omnipack_plan::asset_pack_id(summary.package.asset_pack_prefix.as_deref(), &b.id);
    if b.asset_pack.id != expected_pack_id {
        m.push(format!(
            "bundle `{}`: asset_pack.id is `{}`, expected `{expected_pack_id}`",
            b.id, b.asset_pack.id
        ));
    }
    match fs::read(pack.join("Manifest.json")) {
        Err(e) => m.push(format!("{manifest_rel}: {e}")),
        Ok(bytes) => {
            let expected =
                crate::sidecars::asset_pack_manifest(&b.asset_pack.id, &b.id, b.delivery);
            if sha256_bytes(&bytes) != sha256_bytes(&expected) {
                m.push(format!("{manifest_rel}: differs from the asset-pack manifest of `{}` (id, delivery or selectors changed)", b.id));
            }
        }
    }
    let files_dir = pack.join(&b.id);
    match walk_files(&files_dir) {
        Err(e) => m.push(format!("asset-packs/{}/{}: {e}", b.id, b.id)),
        Ok(found) => {
            let found: BTreeSet<String> = found.into_iter().collect();
            for f in &b.files {
                let rel = format!("asset-packs/{}/{}/{}", b.id, b.id, f.path);
                n += 1;
                if !found.contains(&f.path) {
                    m.push(format!("{rel}: missing"));
                    continue;
                }
                match digest_file(&files_dir.join(&f.path)) {
                    Err(e) => m.push(format!("{rel}: {e}")),
                    Ok(d) if d.sha256 != f.sha256 || d.size != f.size_bytes => m.push(format!(
                        "{rel}: {} bytes with sha256 {}, the summary says {} bytes with sha256 {}",
                        d.size, d.sha256, f.size_bytes, f.sha256
                    )),
                    Ok(_) => {}
                }
            }
            let listed: BTreeSet<&str> = b.files.iter().map(|f| f.path.as_str()).collect();
            for f in &found {
                if !listed.contains(f.as_str()) {
                    m.push(format!(
                        "asset-packs/{}/{}/{f}: not listed in the summary",
                        b.id, b.id
                    ));
                }
            }
        }
    }
    if let Ok(rd) = fs::read_dir(&pack) {
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name != "Manifest.json" && name != b.id {
                m.push(format!(
                    "asset-packs/{}/{name}: not part of the asset pack",
                    b.id
                ));
            }
        }
    }
    (n, m)
}

/// A human description of a bundle zip: its `bundle.json`, every entry with size, offset,
/// alignment and sha256, and the zip's own digest.
pub fn describe_bundle(path: &Path) -> Result<String, String> {
    let d = digest_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (sha, size) = (d.sha256, d.size);
    let entries = read_zip_entries(path)?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: bundle zip, {size} bytes, sha256 {sha}",
        path.display()
    );
    if let Ok(bytes) = read_zip_entry(path, BUNDLE_JSON, MAX_BUNDLE_JSON)
        && let Ok(bj) = serde_json::from_slice::<BundleManifest>(&bytes)
    {
        let runtime = bj
            .runtime
            .map(|r| format!("  runtime {r}"))
            .unwrap_or_default();
        let quantization = bj
            .quantization
            .as_ref()
            .map(|q| {
                format!(
                    "  format {}{}{}",
                    q.format,
                    q.group_size
                        .map(|g| format!("  group_size {g}"))
                        .unwrap_or_default(),
                    q.bits.map(|b| format!("  bits {b}")).unwrap_or_default()
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  bundle_id {}  component {}  role {}{runtime}{quantization}",
            bj.bundle_id, bj.component, bj.role,
        );
        let _ = writeln!(s, "  generator {}", bj.generator);
    } else {
        let _ = writeln!(s, "  (no readable {BUNDLE_JSON}: not an omnipack bundle)");
    }
    let _ = writeln!(
        s,
        "  {:<44} {:>14} {:>12} {:>8}  sha256",
        "entry", "bytes", "offset", "aligned"
    );
    for e in &entries {
        let _ = writeln!(
            s,
            "  {:<44} {:>14} {:>12} {:>8}  {}",
            e.path,
            e.size,
            e.data_start,
            if e.data_start % DATA_ALIGNMENT as u64 == 0 {
                "16KiB"
            } else {
                "-"
            },
            e.sha256
        );
    }
    Ok(s)
}

/// A human description of a summary: package, bundles and tiers.
pub fn describe_summary(path: &Path) -> Result<String, String> {
    let sm = read_summary(path).map_err(|e| e.to_string())?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: summary v{} of {} {} ({}), by {}",
        path.display(),
        sm.summary_version,
        sm.package.name,
        sm.package.version,
        sm.package.bundle_id,
        sm.generator
    );
    let _ = writeln!(s, "  manifest_sha256 {}", sm.manifest_sha256);
    let _ = writeln!(s, "  inputs:");
    for i in &sm.inputs {
        let _ = writeln!(s, "    {}  {}", i.sha256, i.path);
    }
    let _ = writeln!(s, "  bundles:");
    let _ = writeln!(
        s,
        "    {:<32} {:<8} {:<10} {:<6} {:>14} {:>14} {:>14}",
        "id", "format", "delivery", "resid.", "zip bytes", "weights", "resident"
    );
    for b in &sm.bundles {
        let _ = writeln!(
            s,
            "    {:<32} {:<8} {:<10} {:<6} {:>14} {:>14} {:>14}",
            b.id,
            b.quantization.as_ref().map_or("-", |q| q.format.as_str()),
            b.delivery.as_str(),
            b.residency,
            b.size_bytes,
            b.weights_bytes,
            b.resident_bytes
        );
    }
    let _ = writeln!(s, "  tiers:");
    for t in &sm.tiers {
        let _ = writeln!(
            s,
            "    {:<16} limit {:>12}  peak {:>12}  headroom {:>12}  fits {}  loads {}",
            t.name,
            t.memory_limit_bytes,
            t.memory.peak_bytes,
            t.memory.headroom_bytes,
            if t.fits { "yes" } else { "NO" },
            t.bundles.join(", ")
        );
    }
    Ok(s)
}
