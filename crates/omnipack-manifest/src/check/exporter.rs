//! Exporter rules (`source.command`): `run` names a program and uses only the known
//! placeholders, `inputs` exist (they are hashed into the cache key), and `outputs` stay inside
//! the exporter's `{out}` folder.

use std::path::Path;

use crate::check::typed::TypedComponent;
use crate::diagnostic::{Diagnostic, Severity};
use crate::did_you_mean::nearest;
use crate::lexical_path::normalize_str as normalize;
use crate::locate::{Locator, ManifestPath};
use crate::model::CommandSource;
use crate::rel_path::{is_absolute, shown};

/// The placeholders of an exporter's argv.
const PLACEHOLDERS: [&str; 6] = [
    "out",
    "tier",
    "format",
    "group_size",
    "max_seq_len",
    "component",
];

/// Checks the exporter of `component`, the component at `at`, if it has one; paths are
/// relative to `dir`.
pub(crate) fn check(
    component: &TypedComponent,
    at: &ManifestPath,
    dir: &Path,
    locator: &Locator<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let Some(command) = &component.written.source.command else {
        return;
    };
    let name = &component.written.name;
    let at = at.key("source").key("command");
    run(name, command, &at, locator, out);
    for (j, rel) in command.inputs.iter().flatten().enumerate() {
        if std::fs::metadata(dir.join(rel)).is_err() {
            out.push(
                locator
                    .at(
                        &at.key("inputs").index(j),
                        Severity::Error,
                        format!("component `{name}`: exporter input `{}` does not exist", shown(dir, rel)),
                    )
                    .with_label("not found")
                    .with_help("inputs are hashed into the cache key, so they must exist; paths are relative to the manifest that names them"),
            );
        }
    }
    for (j, output) in command.outputs.iter().enumerate() {
        if let Some(problem) = output_problem(output) {
            out.push(
                locator
                    .at(
                        &at.key("outputs").index(j),
                        Severity::Error,
                        format!("component `{name}`: exporter output `{output}` {problem}"),
                    )
                    .with_label("outside the stage folder")
                    .with_help("outputs are paths relative to the exporter's `{out}` folder, such as `model.mlpackage` or `tokenizer/tokenizer.json`"),
            );
        } else if let Some(problem) = output_overlap(output, &command.outputs[..j]) {
            out.push(
                locator
                    .at(
                        &at.key("outputs").index(j),
                        Severity::Error,
                        format!("component `{name}`: exporter output `{output}` {problem}"),
                    )
                    .with_label("listed twice")
                    .with_help("list each output once: a folder brings every file under it"),
            );
        }
    }
}

/// Whether `o` (already in normal form) is listed among `earlier`, or one of them holds the
/// other: each file must be packaged once, under one name.
fn output_overlap(o: &str, earlier: &[String]) -> Option<String> {
    earlier
        .iter()
        .filter(|e| output_problem(e).is_none())
        .find_map(|e| {
            if e == o {
                Some("is listed twice".to_string())
            } else if o.starts_with(&format!("{e}/")) {
                Some(format!("is inside output `{e}`, listed before it"))
            } else if e.starts_with(&format!("{o}/")) {
                Some(format!("holds output `{e}`, listed before it"))
            } else {
                None
            }
        })
}

/// `run`: a program first, and only known placeholders.
fn run(
    name: &str,
    command: &CommandSource,
    at: &ManifestPath,
    locator: &Locator<'_>,
    out: &mut Vec<Diagnostic>,
) {
    for (j, arg) in command.run.iter().enumerate() {
        let arg_at = at.key("run").index(j);
        if j == 0 && arg.trim().is_empty() {
            out.push(
                locator
                    .at(
                        &arg_at,
                        Severity::Error,
                        format!("component `{name}`: the exporter command is empty"),
                    )
                    .with_label("no program")
                    .with_help(
                        "the first item of `run` is the program, for example `python3` or `sh`",
                    ),
            );
        }
        for placeholder in placeholders(arg) {
            if PLACEHOLDERS.contains(&placeholder) {
                continue;
            }
            let list = PLACEHOLDERS
                .iter()
                .map(|p| format!("`{{{p}}}`"))
                .collect::<Vec<_>>()
                .join(" ");
            let similar = nearest(placeholder, PLACEHOLDERS).or_else(|| {
                PLACEHOLDERS
                    .into_iter()
                    .find(|p| placeholder.starts_with(p) || p.starts_with(placeholder))
            });
            let help = match similar {
                Some(n) => format!("did you mean `{{{n}}}`? placeholders: {list}"),
                None => format!("placeholders: {list}"),
            };
            out.push(
                locator
                    .at(&arg_at, Severity::Error, format!("component `{name}`: unknown placeholder `{{{placeholder}}}` in the exporter command"))
                    .with_label("unknown placeholder")
                    .with_help(help),
            );
        }
    }
}

/// The `{name}` placeholders in one argument (lowercase identifiers only, so JSON such as
/// `{"a": 1}` is left alone).
fn placeholders(arg: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let len = after
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(after.len());
        if len > 0 && after[len..].starts_with('}') {
            found.push(&after[..len]);
        }
        rest = after;
    }
    found
}

/// Why an exporter output path is not inside the stage folder, if it is not.
fn output_problem(o: &str) -> Option<&'static str> {
    if o.trim().is_empty() {
        return Some("is empty");
    }
    if is_absolute(o) {
        return Some("is an absolute path");
    }
    if o.split(['/', '\\']).any(|part| part == "..") {
        return Some("leaves the stage folder (`..`)");
    }
    if normalize(o).is_empty() {
        return Some("is the stage folder itself");
    }
    // One spelling per file: `./t.json`, `a//b` or `d/` would name a file also reachable as
    // `t.json`, `a/b` or `d`, and become a zip entry of that odd name.
    if o.contains('\\') || o.split('/').any(|part| part.is_empty() || part == ".") {
        return Some(
            "is not in normal form (no `.` or empty parts, no trailing or doubled `/`, no `\\`): write it as `a/b`",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_placeholders() {
        assert_eq!(placeholders("{out}/x-{tier}.bin"), ["out", "tier"]);
        assert_eq!(placeholders("--cfg={\"a\": 1}"), Vec::<&str>::new());
        assert_eq!(placeholders("{outdir}"), ["outdir"]);
    }

    #[test]
    fn outputs_stay_inside() {
        assert!(output_problem("../x").is_some());
        assert!(output_problem("a/../../x").is_some());
        assert!(output_problem("/etc/passwd").is_some());
        assert!(output_problem("").is_some());
        assert!(output_problem(".").is_some());
        assert!(output_problem("model.mlpackage").is_none());
        assert!(output_problem("tok/tokenizer.json").is_none());
    }

    #[test]
    fn outputs_have_one_spelling_and_are_listed_once() {
        for odd in ["./t.json", "d/./a", "d//a", "d/", "a\\b"] {
            assert!(output_problem(odd).is_some(), "{odd}");
        }
        let earlier = ["t.json".to_string(), "d".to_string()];
        assert!(output_overlap("t.json", &earlier).is_some());
        assert!(output_overlap("d/a", &earlier).is_some());
        assert!(output_overlap("x", &["x/y".to_string()]).is_some());
        assert!(output_overlap("dd", &earlier).is_none());
    }
}
