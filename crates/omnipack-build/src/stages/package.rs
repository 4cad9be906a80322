//! `package:<bundle>`: the bundle zip and its asset-pack folder, as the plan's
//! [`PackageParams`] say: the weights and `config.json` (or the exported files), the
//! decode-step sidecars, `bundle.json`, and the asset pack's `Manifest.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use omnipack_plan::{BundleContents, ConfigJson, PackageParams, Stage};
use omnipack_quant::{FileDigest, sha256_bytes};
use omnipack_summary::{BundleManifest, FileEntry};
use serde_json::{Map, Value, json};

use crate::bundle_zip::{BUNDLE_JSON, Entry, EntrySource, ZipError, write_zip};
use crate::cache::{CacheEntry, CacheError, CacheKind};
use crate::progress::Event;
use crate::sidecars::{asset_pack_manifest, config_json, decode_step_sidecars};
use crate::stages::cached::Produced;
use crate::stages::quantize::WEIGHTS_FILE;
use crate::stages::{BuildContext, Materialized, PackagedBundle, Ran, StageError, StageOutput};
use omnipack_fs::{copy_file, link_or_copy, write_atomic};

/// Name of the zip in a package entry.
const ZIP_FILE: &str = "bundle.zip";

/// Why a package stage failed.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// An input changed since the build digested it.
    #[error("{}: changed during the build (run it again)", path.display())]
    InputChanged { path: PathBuf },
    /// An input cannot be read.
    #[error("{}: {source}", path.display())]
    ReadInput {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `source.config` is not a JSON object.
    #[error("{}: `source.config` of component `{component}` is not a JSON object", path.display())]
    ConfigNotObject { path: PathBuf, component: String },
    /// `source.config` is not JSON.
    #[error("{}: `source.config` of component `{component}` is not valid JSON: {source}", path.display())]
    ConfigNotJson {
        path: PathBuf,
        component: String,
        source: serde_json::Error,
    },
    /// An exported file has the name of a generated sidecar.
    #[error("`{path}` is both an exporter output and a generated sidecar")]
    SidecarClash { path: String },
    /// An exported file is called `bundle.json`.
    #[error("`{BUNDLE_JSON}` is reserved for omnipack")]
    Reserved,
    /// The zip could not be written.
    #[error("bundle `{bundle}`: {source}")]
    Zip { bundle: String, source: ZipError },
    /// The asset-pack folder could not be written.
    #[error("{}: {source}", path.display())]
    AssetPack {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The cache entry has no zip.
    #[error("cache entry of bundle `{bundle}` has no {ZIP_FILE}")]
    EntryWithoutZip { bundle: String },
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The output of the stage this one depends on was in the remote cache but could not be
    /// downloaded, and running that stage again failed.
    #[error("running `{stage}` again (its output in the remote cache could not be used): {source}")]
    RunAgain {
        stage: String,
        source: Box<super::StageError>,
    },
    /// A file read from the cache is not the one the stage was given (a remote record that
    /// lied about its files).
    #[error("{}: not the file the remote cache's record described (sha256 {found}, expected {expected})", path.display())]
    NotAsRecorded {
        path: PathBuf,
        found: String,
        expected: String,
    },
}

/// The files of a bundle before `bundle.json`, and what its zip's key says of them.
struct Contents {
    entries: Vec<Entry>,
    /// Entries whose file belongs to the cache (hard-linked into the asset pack; other files
    /// are copied, so editing a source later cannot change an output).
    in_cache: BTreeMap<String, bool>,
    weights_bytes: u64,
    parameters: u64,
    /// The measured quality of the quantized weights; none for exported files.
    quality: Option<omnipack_summary::Quality>,
}

/// Runs a package stage on the output of the stage it depends on.
pub(crate) fn run(
    ctx: &BuildContext,
    stage: &Stage,
    p: &PackageParams,
    input: StageOutput,
) -> Result<Ran, StageError> {
    let mut contents = contents(ctx, stage, p, input)?;
    add_sidecars(p, &mut contents)?;
    let files = file_list(&contents.entries);
    let bundle_json = bundle_json(p, &files, contents.quality.clone());
    let mut files = files;
    files.push(FileEntry {
        path: BUNDLE_JSON.into(),
        size_bytes: bundle_json.digest.size,
        sha256: bundle_json.digest.sha256.clone(),
    });
    files.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    let pack_manifest = asset_pack_manifest(&p.asset_pack.id, &p.bundle, p.asset_pack.delivery);
    let material = json!({
        "bundle_json": bundle_json.digest.sha256,
        "asset_pack_manifest": sha256_bytes(&pack_manifest),
        "weights_bytes": contents.weights_bytes,
        "parameters": contents.parameters,
    });
    contents.entries.push(bundle_json);
    let (weights_bytes, parameters) = (contents.weights_bytes, contents.parameters);
    let quality = contents.quality.clone();
    let c = ctx.cached(
        CacheKind::Package,
        &material,
        |work| {
            let contents = local_contents(ctx, stage, contents)?;
            write_bundle(ctx, stage, p, &contents, &pack_manifest, work)
        },
        |entry| {
            read_entry(
                entry,
                p,
                files.clone(),
                weights_bytes,
                parameters,
                quality.clone(),
            )
        },
    )?;
    Ok(Ran {
        output: StageOutput::Bundle(Arc::new(c.value)),
        from_cache: c.from_cache,
    })
}

/// `contents` with every file on local disk: the files of a stage output found in the remote
/// cache are downloaded now (only a package that is built reads them), and their digests
/// taken from the verified local entry (CRC-32s included). When that download is refused, the
/// stage that made them runs again.
fn local_contents(
    ctx: &BuildContext,
    stage: &Stage,
    mut contents: Contents,
) -> Result<Contents, PackageError> {
    for e in &mut contents.entries {
        let EntrySource::File(path) = &e.source else {
            continue;
        };
        let entry = match ctx.materialize(path)? {
            Materialized::Local => continue,
            Materialized::Fetched(entry) => entry,
            Materialized::Lost { kind, key } => {
                let dep = stage.depends_on.first().cloned().unwrap_or_default();
                super::run_again(ctx, &dep).map_err(|source| PackageError::RunAgain {
                    stage: dep.clone(),
                    source: Box::new(source),
                })?;
                match ctx.cache.lookup(kind, &key) {
                    crate::cache::Lookup::Hit(entry) => entry,
                    _ => {
                        return Err(PackageError::Cache(CacheError {
                            path: path.clone(),
                            source: std::io::Error::other(format!(
                                "not in the cache after running `{dep}` again"
                            )),
                        }));
                    }
                }
            }
        };
        let rel = path
            .strip_prefix(&entry.dir)
            .map(omnipack_manifest::lexical_path::slash)
            .unwrap_or_default();
        let found = entry.get(&rel).map(|f| f.digest());
        match found {
            Some(d) if d.sha256 == e.digest.sha256 && d.size == e.digest.size => e.digest = d,
            other => {
                return Err(PackageError::NotAsRecorded {
                    path: path.clone(),
                    found: other.map(|d| d.sha256).unwrap_or_else(|| "none".into()),
                    expected: e.digest.sha256.clone(),
                });
            }
        }
    }
    Ok(contents)
}

/// The bundle's weights and `config.json`, or the exported files.
fn contents(
    ctx: &BuildContext,
    stage: &Stage,
    p: &PackageParams,
    input: StageOutput,
) -> Result<Contents, StageError> {
    let wrong = |expected| StageError::WrongInput {
        stage: stage.id.clone(),
        expected,
    };
    match (&p.contents, input) {
        (BundleContents::QuantizedWeights { config_json: cfg }, StageOutput::Weights(w)) => {
            let base = source_config(ctx, p, cfg)?;
            Ok(Contents {
                entries: vec![
                    Entry {
                        path: WEIGHTS_FILE.into(),
                        source: EntrySource::File(w.file.clone()),
                        digest: w.digest.clone(),
                    },
                    Entry::bytes("config.json", config_json(base.as_ref(), cfg)),
                ],
                in_cache: BTreeMap::from([(WEIGHTS_FILE.to_string(), true)]),
                weights_bytes: w.data_bytes,
                parameters: w.parameters,
                quality: Some(w.quality.clone()),
            })
        }
        (BundleContents::QuantizedWeights { .. }, _) => Err(wrong("quantized weights")),
        (BundleContents::ExportedFiles, StageOutput::Files(files)) => Ok(Contents {
            entries: files
                .iter()
                .map(|f| Entry {
                    path: f.path.clone(),
                    source: EntrySource::File(f.abs.clone()),
                    digest: f.digest.clone(),
                })
                .collect(),
            // Exported files were written by another program: they are copied into the asset
            // pack, never hard-linked, so that nothing it left running could write to a shipped
            // file or to its cache entry through a shared inode.
            in_cache: BTreeMap::new(),
            weights_bytes: files.iter().map(|f| f.digest.size).sum(),
            parameters: 0,
            quality: None,
        }),
        (BundleContents::ExportedFiles, _) => Err(wrong("exported files")),
        (BundleContents::CoreMlModel, StageOutput::CoreMlModel(m)) => Ok(Contents {
            entries: m
                .files
                .iter()
                .map(|f| Entry {
                    path: f.path.clone(),
                    source: EntrySource::File(f.abs.clone()),
                    digest: f.digest.clone(),
                })
                .collect(),
            in_cache: m.files.iter().map(|f| (f.path.clone(), true)).collect(),
            weights_bytes: m.weights_bytes,
            parameters: m.parameters,
            quality: None,
        }),
        (BundleContents::CoreMlModel, _) => Err(wrong("a written Core ML model")),
    }
}

/// The JSON object of the component's `source.config`, read from the bytes that were
/// digested (a file changed since is an error, so the bundle matches the summary's `inputs[]`).
fn source_config(
    ctx: &BuildContext,
    p: &PackageParams,
    cfg: &ConfigJson,
) -> Result<Option<Map<String, Value>>, PackageError> {
    let Some(rel) = &cfg.base else {
        return Ok(None);
    };
    let path = ctx.path(rel);
    let bytes =
        omnipack_fs::read_capped(&path, omnipack_fs::MAX_DOCUMENT_BYTES).map_err(|source| {
            PackageError::ReadInput {
                path: path.clone(),
                source,
            }
        })?;
    if ctx.input_digest(&path).map(|d| &d.sha256) != Some(&sha256_bytes(&bytes)) {
        return Err(PackageError::InputChanged { path });
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(PackageError::ConfigNotObject {
            path,
            component: p.component.clone(),
        }),
        Err(source) => Err(PackageError::ConfigNotJson {
            path,
            component: p.component.clone(),
            source,
        }),
    }
}

/// The decode-step sidecars; an exported file may not take their names, nor `bundle.json`.
fn add_sidecars(p: &PackageParams, contents: &mut Contents) -> Result<(), PackageError> {
    let sidecars = p
        .decode_step
        .iter()
        .flat_map(|s| decode_step_sidecars(s, p.runtime));
    for (path, bytes) in sidecars {
        if contents.entries.iter().any(|e| e.path == path) {
            return Err(PackageError::SidecarClash { path });
        }
        contents.entries.push(Entry::bytes(path, bytes));
    }
    if contents.entries.iter().any(|e| e.path == BUNDLE_JSON) {
        return Err(PackageError::Reserved);
    }
    Ok(())
}

/// Every entry's path, size and sha256, sorted by the bytes of the path.
fn file_list(entries: &[Entry]) -> Vec<FileEntry> {
    let mut files: Vec<FileEntry> = entries
        .iter()
        .map(|e| FileEntry {
            path: e.path.clone(),
            size_bytes: e.digest.size,
            sha256: e.digest.sha256.clone(),
        })
        .collect();
    files.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    files
}

/// `bundle.json`: the bundle's identity, its other files and the measured quality of its
/// weights.
fn bundle_json(
    p: &PackageParams,
    files: &[FileEntry],
    quality: Option<omnipack_summary::Quality>,
) -> Entry {
    let manifest = BundleManifest {
        bundle_id: p.bundle.clone(),
        component: p.component.clone(),
        role: p.role,
        runtime: p.runtime,
        quantization: p.quantization.clone(),
        files: files.to_vec(),
        quality,
        generator: omnipack_summary::generator(),
    };
    // Plain data (strings, integers, finite floats) always serialises.
    let mut bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    bytes.push(b'\n');
    Entry::bytes(BUNDLE_JSON, bytes)
}

/// Writes the zip and the asset-pack folder into `work`.
fn write_bundle(
    ctx: &BuildContext,
    stage: &Stage,
    p: &PackageParams,
    contents: &Contents,
    pack_manifest: &[u8],
    work: &Path,
) -> Result<Produced, PackageError> {
    let total: u64 = contents.entries.iter().map(|e| e.digest.size).sum();
    ctx.progress.event(Event::Started {
        stage: stage.id.clone(),
        total_bytes: Some(total),
    });
    let done = AtomicU64::new(0);
    let zip = write_zip(&work.join(ZIP_FILE), contents.entries.clone(), &|n| {
        let d = done.fetch_add(n, Ordering::Relaxed) + n;
        ctx.progress.event(Event::Bytes {
            stage: stage.id.clone(),
            done: d,
        });
    })
    .map_err(|source| PackageError::Zip {
        bundle: p.bundle.clone(),
        source,
    })?;
    let mut recorded = vec![(
        ZIP_FILE.to_string(),
        Some(FileDigest {
            size: zip.size,
            sha256: zip.sha256,
            crc32: zip.crc32,
        }),
    )];
    recorded.extend(write_asset_pack(
        p,
        contents,
        pack_manifest,
        &work.join("pack"),
    )?);
    Ok(Produced {
        files: recorded,
        meta: json!({"bundle": p.bundle}),
    })
}

/// `pack/Manifest.json` and `pack/<bundle>/<file>` for every entry (hard links to files of the
/// cache, copies of other files); returns what to record of them.
fn write_asset_pack(
    p: &PackageParams,
    contents: &Contents,
    pack_manifest: &[u8],
    pack: &Path,
) -> Result<Vec<(String, Option<FileDigest>)>, PackageError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackageError::AssetPack { path, source }
    };
    let manifest = pack.join("Manifest.json");
    write_atomic(&manifest, pack_manifest).map_err(io(&manifest))?;
    let mut recorded = vec![(
        "pack/Manifest.json".to_string(),
        Some(FileDigest::of_bytes(pack_manifest)),
    )];
    for e in &contents.entries {
        let dest = pack.join(&p.bundle).join(&e.path);
        match &e.source {
            EntrySource::Bytes(bytes) => write_atomic(&dest, bytes).map_err(io(&dest))?,
            EntrySource::File(src) => if contents.in_cache.get(&e.path).copied().unwrap_or(false) {
                link_or_copy(src, &dest)
            } else {
                copy_file(src, &dest).map(|_| ())
            }
            .map_err(io(&dest))?,
        }
        recorded.push((
            format!("pack/{}/{}", p.bundle, e.path),
            Some(e.digest.clone()),
        ));
    }
    Ok(recorded)
}

fn read_entry(
    entry: &CacheEntry,
    p: &PackageParams,
    files: Vec<FileEntry>,
    weights_bytes: u64,
    parameters: u64,
    quality: Option<omnipack_summary::Quality>,
) -> Result<PackagedBundle, PackageError> {
    let z = entry
        .get(ZIP_FILE)
        .ok_or_else(|| PackageError::EntryWithoutZip {
            bundle: p.bundle.clone(),
        })?;
    Ok(PackagedBundle {
        zip: entry.file(ZIP_FILE),
        zip_sha256: z.sha256.clone(),
        zip_size: z.size,
        pack_dir: entry.file("pack"),
        files,
        weights_bytes,
        parameters,
        quality,
    })
}
