//! The last steps of a build: the new output tree assembled in the staging folder (bundles and
//! asset packs hard-linked from the cache, `app/` with a copy of the summary and its Swift
//! types, the summary written last), swapped into the output folder, then the private cache
//! pruned.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use omnipack_summary::Summary;

use super::BuildError;
use crate::cache::Cache;
use crate::output::{APP_DIR, SwapArea};
use crate::progress::{Event, Progress};
use crate::stages::PackagedBundle;
use omnipack_fs::{link_or_copy, walk_files, write_atomic};

/// A private cache keeps the entries used by this many most recent builds.
pub const KEEP_BUILDS: usize = 3;

fn io_err(p: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: p.display().to_string(),
        source,
    }
}

/// Assembles the new output in the staging tree of `swap` (summary last) and swaps it in.
pub(crate) fn install(
    swap: &SwapArea,
    summary: &Summary,
    bundles: &BTreeMap<String, Arc<PackagedBundle>>,
) -> Result<(), BuildError> {
    let new = swap.prepare()?;
    for b in &summary.bundles {
        let built = bundles.get(&b.id).ok_or_else(|| BuildError::NotPackaged {
            bundle: b.id.clone(),
        })?;
        link_or_copy(&built.zip, &new.join(&b.file)).map_err(io_err(&built.zip))?;
        let pack = new.join("asset-packs").join(&b.id);
        for f in walk_files(&built.pack_dir).map_err(io_err(&built.pack_dir))? {
            link_or_copy(&built.pack_dir.join(&f), &pack.join(&f)).map_err(io_err(&pack))?;
        }
    }
    fs::create_dir_all(new.join("bundles")).map_err(io_err(&new))?;
    fs::create_dir_all(new.join("asset-packs")).map_err(io_err(&new))?;
    let mut text = serde_json::to_vec_pretty(summary).map_err(BuildError::Summary)?;
    text.push(b'\n');
    // What the app target takes: the summary (as a bundle resource) and its Swift types.
    let app = new.join(APP_DIR);
    fs::create_dir_all(&app).map_err(io_err(&app))?;
    let swift = omnipack_summary::swift::summary_swift().map_err(BuildError::SwiftTypes)?;
    let path = app.join(omnipack_summary::swift::SWIFT_FILE);
    write_atomic(&path, swift.as_bytes()).map_err(io_err(&path))?;
    let path = app.join(omnipack_summary::SUMMARY_FILE);
    write_atomic(&path, &text).map_err(io_err(&path))?;
    let path = new.join(omnipack_summary::SUMMARY_FILE);
    write_atomic(&path, &text).map_err(io_err(&path))?;
    swap.commit()?;
    Ok(())
}

/// Keeps what the last [`KEEP_BUILDS`] builds used in a private cache and deletes the rest
/// (reported); a failure to prune is a warning.
pub(crate) fn prune(cache: &Cache, progress: &dyn Progress, warnings: &mut Vec<String>) {
    match cache.prune(KEEP_BUILDS) {
        Ok(0) => {}
        Ok(n) => progress.event(Event::Note(format!(
            "removed {n} cache entr{} no build among the last {KEEP_BUILDS} used",
            if n == 1 { "y" } else { "ies" }
        ))),
        Err(e) => {
            let w = format!("could not prune the cache {}: {e}", cache.root().display());
            progress.event(Event::Warning(w.clone()));
            warnings.push(w);
        }
    }
}
