//! The build pipeline in-process: `build(plan, options, progress)` on small projects with a
//! fake exporter (a sh script written by the test) and a fake clock, checking cache hits, the
//! digest memo's racy window, a failing exporter and the typed errors.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use omnipack_build::exporter::ExporterError;
use omnipack_build::output::OutputError;
use omnipack_build::progress::Collect;
use omnipack_build::stages::ExportError;
use omnipack_build::{
    BuildError, BuildOptions, BuildReport, Clock, Event, NoProgress, StageError, StageFailure,
    UnbuildablePlan, build,
};
use omnipack_plan::Plan;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The fake exporter: writes its placeholders into `{out}/tok.json`, or fails when the
/// project holds a file `fail`.
const EXPORTER: &str = r#"#!/bin/sh
# $1 = {out}, $2 = {component}, $3 = {max_seq_len}
if [ -e fail ]; then echo "exporter says no" >&2; exit 7; fi
printf '{"component":"%s","max_seq_len":"%s"}\n' "$2" "$3" > "$1/tok.json"
"#;

/// A project folder: the example checkpoint, the fake exporter and a manifest with a text
/// decode step, an image decoder and the exporter's `tok` data component.
fn project() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::copy(
        root().join("examples/omnicoder-tiny/model.safetensors"),
        d.path().join("model.safetensors"),
    )
    .unwrap();
    fs::write(d.path().join("exporter.sh"), EXPORTER).unwrap();
    fs::write(
        d.path().join("omnipack.yaml"),
        r#"omnipack: 1
package: { name: t, version: 1.0.0, bundle_id: com.example.t }
runtime_overhead: 100MiB
tiers:
  - { name: small, device_memory: 4GiB, memory_limit: 2GiB, max_seq_len: 512 }
components:
  - name: text
    role: text_decode_step
    source: { safetensors: model.safetensors, prefix: text. }
    architecture: { layers: 4, kv_heads: 4, kv_head_dim: 32, hidden_size: 128, vocab_size: 512 }
    max_seq_len: 1024
    quantization: { format: int4, group_size: 64, keep: ["*norm*"] }
    kv_cache: { format: u8, paging: { page_len: 64, resident_pages: 4 } }
  - name: image_decoder
    role: image_decoder
    source: { safetensors: model.safetensors, prefix: image. }
    quantization: { format: int8 }
  - name: tok
    role: data
    source:
      command:
        run: [sh, exporter.sh, "{out}", "{component}", "{max_seq_len}"]
        inputs: [exporter.sh]
        outputs: [tok.json]
        timeout: 10s
    size: 1KiB
"#,
    )
    .unwrap();
    d
}

fn plan_of(dir: &Path) -> Plan {
    let loaded = omnipack_manifest::load(&dir.join("omnipack.yaml")).expect("a valid manifest");
    omnipack_plan::plan(&loaded, &[]).expect("a plan that fits")
}

/// A clock `secs` seconds after `file` was last modified.
fn after(file: &Path, secs: u64) -> Clock {
    let mtime = fs::metadata(file).unwrap().modified().unwrap();
    Clock::new(move || mtime + Duration::from_secs(secs))
}

fn options(out: &Path, clock: Clock) -> BuildOptions {
    BuildOptions {
        jobs: Some(2),
        clock,
        ..BuildOptions::new(out)
    }
}

/// Every file under `dir` except `.omnipack/`, with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if rel == ".omnipack" {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn ran(report: &BuildReport) -> Vec<&str> {
    report
        .stages
        .iter()
        .filter(|s| !s.cached)
        .map(|s| s.stage.as_str())
        .collect()
}

#[test]
fn an_unchanged_rebuild_comes_from_the_cache_and_reads_no_input() {
    let p = project();
    let out = p.path().join("out");
    let plan = plan_of(p.path());
    // Hashed 10 s after the checkpoint was written: outside the memo's racy window.
    let clock = after(&p.path().join("model.safetensors"), 10);
    let first = build(&plan, &options(&out, clock.clone()), &NoProgress).unwrap();
    assert_eq!(ran(&first).len(), plan.stages.len());
    assert!(first.input_bytes_hashed > 0);
    let before = tree(&out);
    let events = Collect::default();
    let again = build(&plan, &options(&out, clock), &events).unwrap();
    assert_eq!(
        ran(&again),
        Vec::<&str>::new(),
        "every stage from the cache"
    );
    assert_eq!(again.input_bytes_hashed, 0, "no input read again");
    assert_eq!(again.summary, first.summary);
    assert!(before == tree(&out), "the same output bytes");
    let cached = events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::Finished { cached: true, .. }))
        .count();
    assert_eq!(cached, plan.stages.len());
    // The fake exporter got its placeholders: the component, and no context length (the
    // component has none, and its command does not depend on the tier).
    let tok = fs::read_to_string(out.join("asset-packs/tok/tok/tok.json")).unwrap();
    assert_eq!(tok, "{\"component\":\"tok\",\"max_seq_len\":\"\"}\n");
}

#[test]
fn inputs_hashed_within_the_racy_window_are_hashed_again() {
    let p = project();
    let out = p.path().join("out");
    let plan = plan_of(p.path());
    let model = p.path().join("model.safetensors");
    // Hashed 1 s after its last change: the checkpoint could still change unseen within the
    // same timestamp tick, so the memo does not vouch for it next time.
    let first = build(&plan, &options(&out, after(&model, 1)), &NoProgress).unwrap();
    let second = build(&plan, &options(&out, after(&model, 10)), &NoProgress).unwrap();
    assert!(second.input_bytes_hashed >= fs::metadata(&model).unwrap().len());
    assert_eq!(
        ran(&second),
        Vec::<&str>::new(),
        "the stages are still cached"
    );
    let third = build(&plan, &options(&out, after(&model, 20)), &NoProgress).unwrap();
    assert_eq!(third.input_bytes_hashed, 0);
    assert_eq!(first.summary, third.summary);
}

#[test]
fn a_changed_exporter_input_runs_only_what_depends_on_it() {
    let p = project();
    let out = p.path().join("out");
    let plan = plan_of(p.path());
    let clock = Clock::new(|| SystemTime::now() + Duration::from_secs(60));
    build(&plan, &options(&out, clock.clone()), &NoProgress).unwrap();
    fs::write(
        p.path().join("exporter.sh"),
        EXPORTER.replace("component", "name"),
    )
    .unwrap();
    let r = build(&plan, &options(&out, clock), &NoProgress).unwrap();
    assert_eq!(ran(&r), ["export:tok", "package:tok"]);
}

#[test]
fn a_failing_exporter_is_a_typed_error_and_the_output_stays() {
    let p = project();
    let out = p.path().join("out");
    let plan = plan_of(p.path());
    build(&plan, &options(&out, Clock::system()), &NoProgress).unwrap();
    let before = tree(&out);
    fs::write(p.path().join("fail"), "").unwrap();
    let opts = BuildOptions {
        no_cache: true,
        ..options(&out, Clock::system())
    };
    let Err(BuildError::Stages(failures)) = build(&plan, &opts, &NoProgress) else {
        panic!("the build should fail in a stage");
    };
    let failed: Vec<&StageFailure> = failures
        .iter()
        .filter(|f| matches!(f, StageFailure::Failed { .. }))
        .collect();
    assert_eq!(failed.len(), 1);
    let StageFailure::Failed { stage, error } = failed[0] else {
        unreachable!()
    };
    assert_eq!(stage, "export:tok");
    let StageError::Export(ExportError::Exporter { component, source }) = error else {
        panic!("an exporter error: {error}");
    };
    assert_eq!(component, "tok");
    assert!(
        matches!(source, ExporterError::Failed { status, tail, .. }
            if status.contains('7') && tail.contains("exporter says no")),
        "{source}"
    );
    assert!(
        failures.iter().any(|f| matches!(f,
            StageFailure::NotRun { stage, failed_dependency }
                if stage == "package:tok" && failed_dependency == "export:tok")),
        "{failures:?}"
    );
    assert!(before == tree(&out), "the previous output is untouched");
}

#[test]
fn the_plan_json_alone_builds_the_same_outputs() {
    let p = project();
    let plan = plan_of(p.path());
    let a = p.path().join("a");
    build(&plan, &options(&a, Clock::system()), &NoProgress).unwrap();
    let json = serde_json::to_string_pretty(&plan).unwrap();
    fs::remove_file(p.path().join("omnipack.yaml")).unwrap();
    let again: Plan = serde_json::from_str(&json).unwrap();
    assert_eq!(again, plan);
    let b = p.path().join("b");
    build(&again, &options(&b, Clock::system()), &NoProgress).unwrap();
    assert!(tree(&a) == tree(&b), "output trees differ");
}

#[test]
fn unbuildable_plans_and_outputs_are_typed_errors() {
    let p = project();
    let plan = plan_of(p.path());
    let out = p.path().join("out");
    let opts = options(&out, Clock::system());

    let mut other = plan.clone();
    other.plan_version = 99;
    let e = build(&other, &opts, &NoProgress).unwrap_err();
    assert!(
        matches!(e, BuildError::Plan(UnbuildablePlan::Version { found: 99 })),
        "{e}"
    );

    let mut tight = plan.clone();
    tight.tiers[0].entry.fits = false;
    let e = build(&tight, &opts, &NoProgress).unwrap_err();
    assert!(
        matches!(&e, BuildError::Plan(UnbuildablePlan::TierDoesNotFit { tier, .. }) if tier == "small"),
        "{e}"
    );

    let mut huge = plan.clone();
    huge.app_store.asset_packs = 101;
    let e = build(&huge, &opts, &NoProgress).unwrap_err();
    assert!(
        matches!(e, BuildError::Plan(UnbuildablePlan::AppStore(_))),
        "{e}"
    );
    assert!(!out.exists(), "nothing is written for an unbuildable plan");

    fs::write(&out, "a file").unwrap();
    let e = build(&plan, &opts, &NoProgress).unwrap_err();
    assert!(
        matches!(e, BuildError::Output(OutputError::NotAFolder { .. })),
        "{e}"
    );
    fs::remove_file(&out).unwrap();
    fs::create_dir_all(out.join("bundles")).unwrap();
    let e = build(&plan, &opts, &NoProgress).unwrap_err();
    assert!(
        matches!(e, BuildError::Output(OutputError::Foreign { .. })),
        "{e}"
    );
    fs::remove_dir_all(&out).unwrap();

    fs::remove_file(p.path().join("model.safetensors")).unwrap();
    let e = build(&plan, &opts, &NoProgress).unwrap_err();
    assert!(
        matches!(&e, BuildError::Input { path, .. } if path.ends_with("model.safetensors")),
        "{e}"
    );
}

#[test]
fn a_corrupt_cache_entry_is_reported_and_rebuilt() {
    let p = project();
    let out = p.path().join("out");
    let plan = plan_of(p.path());
    let first = build(&plan, &options(&out, Clock::system()), &NoProgress).unwrap();
    let entry = fs::read_dir(out.join(".omnipack/cache/quantize"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let weights = entry.join("weights.safetensors");
    let mut bytes = fs::read(&weights).unwrap();
    bytes.truncate(bytes.len() - 1);
    fs::write(&weights, bytes).unwrap();
    let events = Collect::default();
    let again = build(&plan, &options(&out, Clock::system()), &events).unwrap();
    assert!(
        events
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::Note(n) if n.starts_with("cache entry rebuilt"))),
        "the corrupt entry is reported"
    );
    assert_eq!(
        ran(&again)
            .iter()
            .filter(|s| s.starts_with("quantize:"))
            .count(),
        1
    );
    assert_eq!(again.summary, first.summary);
}
