//! The first step of a build: the digest of every input the plan lists (folders expanded,
//! without the build's own output and cache folders), from the digest memo when a file is
//! unchanged, so an unchanged rebuild reads no weights.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use omnipack_manifest::format_bytes;
use omnipack_manifest::lexical_path::normalize;
use omnipack_plan::Plan;
use omnipack_quant::FileDigest;
use rayon::prelude::*;

use super::BuildError;
use crate::digest_memo::{Clock, DigestMemo, MemoStats};
use crate::executor::GraphError;
use crate::progress::{Event, Progress};
use omnipack_fs::walk_files_skipping;

/// The digested inputs, and how many bytes were read to digest them.
pub(crate) struct Inputs {
    pub digests: BTreeMap<PathBuf, FileDigest>,
    pub bytes_hashed: u64,
}

/// Digests every input of `plan` (relative to `root`, absolute) on `jobs` threads, with the
/// memo kept in `memo_path`.
pub(crate) fn digest_inputs(
    plan: &Plan,
    root: &Path,
    skip: &[(u64, u64)],
    memo_path: PathBuf,
    clock: Clock,
    jobs: usize,
    progress: &dyn Progress,
) -> Result<Inputs, BuildError> {
    let files = input_files(plan, root, skip)?;
    let memo = DigestMemo::load(memo_path, clock);
    let stats = Mutex::new(MemoStats::default());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .map_err(|_| BuildError::Graph(GraphError::Pool(jobs)))?;
    let list: Vec<PathBuf> = files.into_iter().collect();
    let digests: BTreeMap<PathBuf, FileDigest> = pool.install(|| {
        list.par_iter()
            .map(|p| {
                memo.digest(p, &stats)
                    .map(|d| (p.clone(), d))
                    .map_err(|source| BuildError::Input {
                        path: p.display().to_string(),
                        source,
                    })
            })
            .collect::<Result<_, _>>()
    })?;
    // The memo only saves work: a build that cannot save it still succeeds.
    let _ = memo.save();
    let (bytes_hashed, memo_hits) = stats
        .lock()
        .map(|s| (s.bytes_hashed, s.memo_hits))
        .unwrap_or((0, 0));
    if bytes_hashed > 0 {
        progress.event(Event::Note(format!(
            "hashed {} of new or changed inputs ({memo_hits} unchanged inputs not read)",
            format_bytes(bytes_hashed)
        )));
    }
    Ok(Inputs {
        digests,
        bytes_hashed,
    })
}

/// Every input file, absolute: the plan's inputs with folders expanded.
fn input_files(
    plan: &Plan,
    root: &Path,
    skip: &[(u64, u64)],
) -> Result<BTreeSet<PathBuf>, BuildError> {
    let mut files = BTreeSet::new();
    for rel in &plan.inputs {
        let p = normalize(&root.join(rel));
        let meta = fs::metadata(&p).map_err(|source| BuildError::Input {
            path: p.display().to_string(),
            source,
        })?;
        if meta.is_dir() {
            let walked = walk_files_skipping(&p, skip).map_err(|source| BuildError::Input {
                path: p.display().to_string(),
                source,
            })?;
            files.extend(walked.into_iter().map(|f| p.join(f)));
        } else {
            files.insert(p);
        }
    }
    Ok(files)
}
