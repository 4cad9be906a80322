//! "Did you mean": the nearest of a set of names to a misspelt one (a key, an enum value, a tier,
//! a placeholder, a file in a folder).

use std::path::Path;

/// Most folder entries looked at when suggesting a file name.
const MAX_FOLDER_ENTRIES: usize = 10_000;

/// Edit distance counting a swap of two neighbours as one edit.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// The closest candidate, if close enough to be a likely typo (case is ignored; a tie is no
/// suggestion).
pub(crate) fn nearest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let word_l = word.to_lowercase();
    let mut scored: Vec<(usize, &'a str)> = candidates
        .into_iter()
        .map(|c| (distance(&word_l, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= (c.chars().count().max(word.chars().count()) / 3).max(1))
        .collect();
    scored.sort_by_key(|(d, _)| *d);
    match scored.as_slice() {
        // A tie (`int5`: `int4` or `int6`?) is no useful suggestion.
        [(d0, _), (d1, _), ..] if d0 == d1 => None,
        [(_, c), ..] => Some(c),
        [] => None,
    }
}

/// The name in `folder` nearest to `name` among those `keep` accepts, for a file that does not
/// exist (`None` when nothing is close), or why the folder cannot be read.
pub(crate) fn nearest_in_folder(
    folder: &Path,
    name: &str,
    keep: impl Fn(&str) -> bool,
) -> std::io::Result<Option<String>> {
    let names: Vec<String> = std::fs::read_dir(folder)?
        .filter_map(|e| e.ok())
        .take(MAX_FOLDER_ENTRIES)
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| keep(n))
        .collect();
    Ok(nearest(name, names.iter().map(String::as_str)).map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_key() {
        let keys = ["quantization", "kv_cache", "name", "role"];
        assert_eq!(nearest("qunatization", keys), Some("quantization"));
        assert_eq!(nearest("nmae", keys), Some("name"));
        assert_eq!(nearest("zzzzzz", keys), None);
        assert_eq!(nearest("int5", ["int4", "int6"]), None, "a tie");
    }

    #[test]
    fn nearest_file_in_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.safetensors"), "").unwrap();
        std::fs::write(dir.path().join("base.yaml"), "").unwrap();
        assert_eq!(
            nearest_in_folder(dir.path(), "modle.safetensors", |_| true).unwrap(),
            Some("model.safetensors".to_string())
        );
        assert_eq!(
            nearest_in_folder(dir.path(), "modle.safetensors", |n| n.ends_with(".yaml")).unwrap(),
            None
        );
        assert!(nearest_in_folder(&dir.path().join("missing"), "x", |_| true).is_err());
    }
}
