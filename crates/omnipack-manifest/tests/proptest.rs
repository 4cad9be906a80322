//! Properties of the parsers: no input panics, every diagnostic points inside its file, and
//! sizes parse exactly.

use omnipack_manifest::units::parse_size;
use proptest::prelude::*;

/// YAML-ish text: keys of the format, punctuation that trips scanners, non-ASCII, tabs.
fn yamlish() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "omnipack: 1\n",
        "tiers:\n",
        "components:\n",
        "  - ",
        "name: é\n",
        "- ",
        "[",
        "]",
        "{",
        "}",
        ":",
        ",",
        "\t",
        "\"",
        "'",
        "&a ",
        "*a ",
        "<<: *a\n",
        "  ",
        "\n",
        "# c\n",
        "memory_limit: 1.4GiB\n",
        "role: data\n",
        "extends: x.yaml\n",
        "source: { files: [a] }\n",
        "ü",
        "---\n",
        "? ",
        "!!str ",
        "|\n",
        ">\n",
    ]);
    prop::collection::vec(atoms, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn loading_never_panics_and_locates_inside_the_file(text in yamlish()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.yaml");
        std::fs::write(&path, &text).unwrap();
        if let Err(diags) = omnipack_manifest::load(&path) {
            prop_assert!(diags.error_count() > 0);
            for d in diags.iter() {
                if let Some(src) = d.source_file() {
                    let span = d.span.clone().unwrap();
                    prop_assert!(span.start <= span.end && span.end <= src.text.len());
                    prop_assert!(src.text.is_char_boundary(span.start) && src.text.is_char_boundary(span.end));
                    prop_assert!(d.line.is_some_and(|l| l >= 1) && d.column.is_some_and(|c| c >= 1));
                }
                let _ = d.render();
            }
        }
    }

    #[test]
    fn sizes_parse_exactly(n in 0u64..1_000_000, unit in prop::sample::select(vec![
        ("", 1u64), ("B", 1), ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("KB", 1000), ("MB", 1_000_000), ("GB", 1_000_000_000),
    ]), frac in 0u32..1000) {
        prop_assert_eq!(parse_size(&format!("{n}{}", unit.0)).unwrap(), n * unit.1);
        // A decimal is rounded down to whole bytes.
        let with_frac = parse_size(&format!("{n}.{frac:03}{}", unit.0)).unwrap();
        prop_assert_eq!(with_frac, n * unit.1 + (frac as u64 * unit.1) / 1000);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Fuzzing: arbitrary bytes as a manifest, and as the base it `extends` (whose text is
    /// never shown when it is not a manifest: no diagnostic locates inside it).
    #[test]
    fn arbitrary_bytes_and_bases_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        base in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.yaml");
        std::fs::write(&path, &bytes).unwrap();
        let _ = omnipack_manifest::load(&path);
        std::fs::write(dir.path().join("base.bin"), &base).unwrap();
        std::fs::write(&path, "omnipack: 1\nextends: base.bin\n").unwrap();
        if let Err(diags) = omnipack_manifest::load(&path) {
            for d in diags.iter() {
                if d.message.contains("is not a manifest") {
                    prop_assert!(d.source_file().is_none_or(|s| !s.name.ends_with("base.bin")));
                }
                let _ = d.render();
            }
        }
    }
}
