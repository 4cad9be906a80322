//! `omnipack verify OUT_DIR`: re-hashes every bundle zip, every file inside it and every
//! asset-pack folder against `mobile_packager_summary.json` and each `bundle.json`.
//! Also the bundle-zip and summary descriptions used by `omnipack inspect`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use omnipack_manifest::printable;
use omnipack_summary::{BundleEntry, BundleManifest, SUMMARY_FILE, Summary};
use rayon::prelude::*;

use crate::bundle_zip::{BUNDLE_JSON, DATA_ALIGNMENT, read_zip_entries, read_zip_entry};
use crate::output::{APP_DIR, PRIVATE_DIR};
use omnipack_fs::{is_safe_relative, walk_files};
use omnipack_quant::{digest_file, is_sha256, sha256_bytes};

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
    omnipack_summary::read_summary(path).map_err(|message| VerifyError::Summary {
        path: path.display().to_string(),
        message,
    })
}

/// Most bundles a summary may list for `verify` to check them (a package has a few per tier).
pub const MAX_BUNDLES: usize = 10_000;

/// A mismatch when a path inside the output folder, or any folder on the way to it, is a
/// symlink: `verify` checks the output folder itself, never what a link points to.
fn link_on_path(out: &Path, rel: &str) -> Option<String> {
    let mut p = out.to_path_buf();
    for part in rel.split('/') {
        p.push(part);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let shown = p.strip_prefix(out).unwrap_or(&p).display().to_string();
                return Some(format!(
                    "{shown}: a symlink (to {}): refused, the output folder holds files only",
                    fs::read_link(&p)
                        .map(|t| t.display().to_string())
                        .unwrap_or_default()
                ));
            }
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Verifies the output folder `out`.
pub fn verify(out: &Path) -> Result<VerifyReport, VerifyError> {
    if let Some(m) = link_on_path(out, SUMMARY_FILE) {
        return Err(VerifyError::Summary {
            path: out.join(SUMMARY_FILE).display().to_string(),
            message: m,
        });
    }
    let summary = read_summary(&out.join(SUMMARY_FILE))?;
    let mut report = VerifyReport {
        bundles: summary.bundles.len(),
        ..Default::default()
    };
    if summary.bundles.len() > MAX_BUNDLES {
        report.mismatches.push(format!(
            "{SUMMARY_FILE}: lists {} bundles, more than the {MAX_BUNDLES} verify checks",
            summary.bundles.len()
        ));
        return Ok(report);
    }
    for name in ["bundles", "asset-packs"] {
        if let Some(m) = link_on_path(out, name) {
            report.mismatches.push(m);
            return Ok(report);
        }
    }
    if out.join(PRIVATE_DIR).join("swap").join("READY").exists() {
        report.mismatches.push(format!(
            "{}: a build was interrupted while installing its output; run the build again to finish it",
            out.display()
        ));
    }
    report.mismatches.extend(check_summary(&summary));
    // Each zip is hashed once: a second bundle naming the same file is a mismatch, not work.
    let mut files_seen = BTreeSet::new();
    let distinct: Vec<&BundleEntry> = summary
        .bundles
        .iter()
        .filter(|b| files_seen.insert(b.file.as_str()))
        .collect();
    let results: Vec<(usize, Vec<String>)> = distinct
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
    // The summary has no manifest path, so the inputs are not re-hashed here (a rebuild from
    // the same manifest and inputs writes a byte-identical summary); their form is checked.
    if !is_sha256(&summary.manifest_sha256) {
        m.push(format!(
            "{SUMMARY_FILE}: manifest_sha256 `{}` is not a lowercase hex sha256",
            summary.manifest_sha256
        ));
    }
    let mut paths = BTreeSet::new();
    for i in &summary.inputs {
        if i.path.is_empty() || i.path.starts_with('/') || i.path.contains('\\') {
            m.push(format!(
                "{SUMMARY_FILE}: input `{}` is not a `/`-separated path relative to the manifest",
                i.path
            ));
        }
        if !is_sha256(&i.sha256) {
            m.push(format!(
                "{SUMMARY_FILE}: input `{}`: sha256 `{}` is not a lowercase hex sha256",
                i.path, i.sha256
            ));
        }
        if !paths.insert(i.path.as_str()) {
            m.push(format!(
                "{SUMMARY_FILE}: input `{}` is listed twice",
                i.path
            ));
        }
    }
    let mut ids = BTreeSet::new();
    let mut files = BTreeSet::new();
    for b in &summary.bundles {
        if !ids.insert(b.id.as_str()) {
            m.push(format!("{SUMMARY_FILE}: bundle `{}` is listed twice", b.id));
        }
        if !files.insert(b.file.as_str()) {
            m.push(format!(
                "{SUMMARY_FILE}: bundle `{}` names `{}`, the file of another bundle",
                b.id, b.file
            ));
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
    let pack_rel = format!("asset-packs/{}", b.id);
    for rel in [b.file.as_str(), pack_rel.as_str()] {
        if let Some(link) = link_on_path(out, rel) {
            m.push(link);
            return (n, m);
        }
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
                        || bj.quality != b.quality
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
    let manifest_bytes = match link_on_path(out, &manifest_rel) {
        Some(link) => Err(link),
        None => omnipack_fs::read_capped_nofollow(
            &pack.join("Manifest.json"),
            omnipack_fs::MAX_DOCUMENT_BYTES,
        )
        .map_err(|e| e.to_string()),
    };
    match manifest_bytes {
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
                if let Some(link) = link_on_path(out, &rel) {
                    m.push(link);
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
            for c in listed
                .iter()
                .filter(|p| p.rsplit('/').next() == Some("config.json"))
            {
                let folder = c.rsplit_once('/').map(|(d, _)| d);
                for w in listed.iter().filter(|p| {
                    p.ends_with(".safetensors") && p.rsplit_once('/').map(|(d, _)| d) == folder
                }) {
                    if let Some(why) = config_disagrees(&files_dir.join(c), &files_dir.join(w)) {
                        m.push(format!("asset-packs/{}/{}/{c}: {why}", b.id, b.id));
                    }
                }
            }
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

/// Why the `config.json` at `config` disagrees with the weights at `weights` about their
/// MLX affine quantization (`None` when they agree or there is nothing to compare): every
/// `<p>.weight` stored as U32 codes with `<p>.scales` and `<p>.biases` must be what the
/// config's `quantization` (`bits`, `group_size`) says, and a config that says nothing must
/// come with float weights. Unreadable files are reported by the digest checks.
fn config_disagrees(config: &Path, weights: &Path) -> Option<String> {
    let config: serde_json::Value = serde_json::from_slice(&fs::read(config).ok()?).ok()?;
    let tensors = omnipack_quant::read_header(weights).ok()?;
    let names: BTreeSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    let coded: Vec<&str> = tensors
        .iter()
        .filter(|t| {
            t.dtype == omnipack_quant::Dtype::U32
                && t.shape.len() == 2
                && t.name.ends_with(".weight")
                && names.contains(format!("{}scales", t.name.trim_end_matches("weight")).as_str())
        })
        .map(|t| t.name.as_str())
        .collect();
    let said = config
        .get("quantization")
        .filter(|q| q.get("bits").is_some() || q.get("group_size").is_some());
    let weights_name = weights
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match said {
        None => {
            let found = omnipack_quant::SourceLayout::recognise(&tensors, None, &|_| None);
            let first = coded.first()?;
            Some(format!(
                "has no `quantization`, but `{first}` in {weights_name} is stored quantized ({})",
                found
                    .group_of(first)
                    .map(|g| g.format.to_string())
                    .unwrap_or_else(|| "MLX affine codes".into())
            ))
        }
        Some(q) => {
            let wrapped = serde_json::json!({ "quantization": q });
            let layout =
                omnipack_quant::SourceLayout::recognise(&tensors, Some(&wrapped), &|_| None);
            let bits = q.get("bits").map(|v| v.to_string()).unwrap_or_default();
            let group = q
                .get("group_size")
                .map(|v| v.to_string())
                .unwrap_or_default();
            if coded.is_empty() {
                return Some(format!(
                    "says `quantization: {{bits: {bits}, group_size: {group}}}`, but {weights_name} has no quantized weight"
                ));
            }
            let wrong = coded.iter().find(|n| layout.group_of(n).is_none())?;
            let found = omnipack_quant::SourceLayout::recognise(&tensors, None, &|_| None);
            Some(format!(
                "says `quantization: {{bits: {bits}, group_size: {group}}}`, but `{wrong}` in {weights_name} is not stored so{}",
                found
                    .group_of(wrong)
                    .map(|g| format!(" (its shapes read as {})", g.format))
                    .unwrap_or_default()
            ))
        }
    }
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
            printable(&bj.bundle_id),
            printable(&bj.component),
            bj.role,
        );
        let _ = writeln!(s, "  generator {}", printable(&bj.generator));
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
            printable(&e.path),
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
        printable(&sm.package.name),
        printable(&sm.package.version),
        printable(&sm.package.bundle_id),
        printable(&sm.generator)
    );
    let _ = writeln!(s, "  manifest_sha256 {}", printable(&sm.manifest_sha256));
    let _ = writeln!(s, "  inputs:");
    for i in &sm.inputs {
        let _ = writeln!(s, "    {}  {}", printable(&i.sha256), printable(&i.path));
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
            printable(&b.id),
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
            printable(&t.name),
            t.memory_limit_bytes,
            t.memory.peak_bytes,
            t.memory.headroom_bytes,
            if t.fits { "yes" } else { "NO" },
            printable(&t.bundles.join(", "))
        );
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnipack_quant::{Dtype, OutputKind, OutputTensor};

    /// Writes a safetensors file of zeros with these tensors.
    fn weights(path: &Path, tensors: &[(&str, Dtype, Vec<u64>)]) {
        let outs: Vec<OutputTensor> = tensors
            .iter()
            .map(|(n, d, s)| OutputTensor {
                name: n.to_string(),
                dtype: *d,
                shape: s.clone(),
                source: n.to_string(),
                kind: OutputKind::Kept,
            })
            .collect();
        let mut bytes = omnipack_quant::header_bytes(&outs, &Default::default());
        bytes.resize(bytes.len() + omnipack_quant::data_bytes(&outs) as usize, 0);
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn config_json_must_agree_with_the_weights() {
        let dir = tempfile::tempdir().unwrap();
        let (c, w) = (
            dir.path().join("config.json"),
            dir.path().join("w.safetensors"),
        );
        // int4 g64 codes of a 64 x 256 weight.
        weights(
            &w,
            &[
                ("l.biases", Dtype::F16, vec![64, 4]),
                ("l.scales", Dtype::F16, vec![64, 4]),
                ("l.weight", Dtype::U32, vec![64, 32]),
            ],
        );
        fs::write(&c, r#"{"quantization": {"group_size": 64, "bits": 4}}"#).unwrap();
        assert_eq!(config_disagrees(&c, &w), None);
        fs::write(&c, r#"{"quantization": {"group_size": 64, "bits": 8}}"#).unwrap();
        let why = config_disagrees(&c, &w).unwrap();
        assert!(
            why.contains("bits: 8") && why.contains("`l.weight`") && why.contains("int4 g64"),
            "{why}"
        );
        fs::write(&c, r#"{"torch_dtype": "float16"}"#).unwrap();
        let why = config_disagrees(&c, &w).unwrap();
        assert!(why.contains("has no `quantization`"), "{why}");
        weights(&w, &[("l.weight", Dtype::F16, vec![64, 256])]);
        assert_eq!(config_disagrees(&c, &w), None);
        fs::write(&c, r#"{"quantization": {"group_size": 64, "bits": 4}}"#).unwrap();
        let why = config_disagrees(&c, &w).unwrap();
        assert!(why.contains("no quantized weight"), "{why}");
    }
}
