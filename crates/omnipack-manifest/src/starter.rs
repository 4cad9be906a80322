//! A first manifest for a checkpoint, as `omnipack init` writes it: the tensors grouped into
//! components by prefix, a role guessed for each, the decode step's `architecture` from a
//! `config.json` or the tensor shapes, two tiers, and a YAML text with a comment on every key.
//!
//! Everything here works on what was already read (tensor names and shapes, the config
//! object, paths as they will be written): no file is touched and nothing is printed.

use std::collections::BTreeMap;

use omnipack_quant::TensorInfo;

/// First name segments that belong to a plain language model (`model.layers.0...`,
/// `lm_head.weight`): a checkpoint made only of these is one text component with no prefix.
const LANGUAGE_MODEL_ROOTS: &[&str] = &[
    "model",
    "lm_head",
    "transformer",
    "embed_tokens",
    "layers",
    "norm",
    "tok_embeddings",
    "output",
];

/// The `architecture` of a decode step and where each value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchitectureGuess {
    /// Transformer layers.
    pub layers: u64,
    /// Key/value heads.
    pub kv_heads: u64,
    /// Size of one key/value head.
    pub kv_head_dim: u64,
    /// Hidden size.
    pub hidden_size: u64,
    /// Vocabulary size.
    pub vocab_size: u64,
    /// One note per value not read from the config (`kv_head_dim 64: guessed, ...`).
    pub notes: Vec<String>,
    /// Every value came from the config.
    pub from_config: bool,
}

/// One component of the starter manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentGuess {
    /// Component name (`[a-z0-9][a-z0-9_-]*`).
    pub name: String,
    /// `source.prefix` (`text.`), none when the component takes every tensor.
    pub prefix: Option<String>,
    /// The guessed role (`text_decode_step`, `image_decoder`, ...).
    pub role: &'static str,
    /// Why that role.
    pub reason: String,
    /// Tensors it takes.
    pub tensors: usize,
    /// Their bytes as stored.
    pub bytes: u64,
    /// For a decode step.
    pub architecture: Option<ArchitectureGuess>,
}

/// Groups tensors into components by their first name segment and guesses each one's role
/// and (for a decode step) its architecture. `config` is the checkpoint's `config.json`
/// (its `text_config` is read when the top level has no `hidden_size`).
pub fn guess_components(
    tensors: &[TensorInfo],
    config: Option<&serde_json::Value>,
) -> Result<Vec<ComponentGuess>, String> {
    if tensors.is_empty() {
        return Err("holds no tensors".into());
    }
    let mut groups: BTreeMap<&str, Vec<&TensorInfo>> = BTreeMap::new();
    let mut dotless = false;
    for t in tensors {
        match t.name.split_once('.') {
            Some((first, _)) if !first.is_empty() => groups.entry(first).or_default().push(t),
            _ => dotless = true,
        }
    }
    let plain_llm = groups.keys().all(|k| LANGUAGE_MODEL_ROOTS.contains(k));
    if dotless || groups.len() == 1 || plain_llm {
        let all: Vec<&TensorInfo> = tensors.iter().collect();
        let name = if is_decode_step(&all, "") {
            "text".to_string()
        } else {
            groups
                .keys()
                .next()
                .map(|k| component_name(k))
                .filter(|n| !n.is_empty() && groups.len() == 1 && !dotless)
                .unwrap_or_else(|| "model".into())
        };
        return Ok(vec![guess_one(name, None, &all, config)?]);
    }
    let mut out: Vec<ComponentGuess> = Vec::new();
    for (first, members) in &groups {
        let mut name = component_name(first);
        if name.is_empty() {
            name = "part".into();
        }
        let base = name.clone();
        let mut n = 2;
        while out.iter().any(|c| c.name == name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        out.push(guess_one(name, Some(format!("{first}.")), members, config)?);
    }
    // The decode step first, as in the committed manifests.
    out.sort_by_key(|c| c.role != "text_decode_step");
    Ok(out)
}

/// A component name from a prefix word: lower case, characters outside `[a-z0-9_-]` become
/// `_`, at most 64 characters, starting with a letter or digit (empty when nothing is left).
pub fn component_name(word: &str) -> String {
    let s: String = word
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_start_matches(['_', '-']);
    s.chars().take(64).collect()
}

/// Whether the tensors (names after `prefix`) look like a language model's decode step:
/// token embeddings or an output head, or numbered layers with attention key projections.
fn is_decode_step(members: &[&TensorInfo], prefix: &str) -> bool {
    let names = || members.iter().map(|t| &t.name[prefix.len()..]);
    names().any(|n| {
        n.contains("embed_tokens") || n.starts_with("lm_head") || n.contains("tok_embeddings")
    }) || (layer_count(members, prefix).is_some() && names().any(|n| n.contains("k_proj")))
}

/// `max(N) + 1` over the `layers.N.` (or `h.N.`) segments of the names.
fn layer_count(members: &[&TensorInfo], prefix: &str) -> Option<u64> {
    let mut max: Option<u64> = None;
    for t in members {
        let parts: Vec<&str> = t.name[prefix.len()..].split('.').collect();
        for w in parts.windows(2) {
            if matches!(w[0], "layers" | "h")
                && let Ok(i) = w[1].parse::<u64>()
            {
                max = Some(max.map_or(i, |m| m.max(i)));
            }
        }
    }
    max.map(|m| m + 1)
}

fn guess_one(
    name: String,
    prefix: Option<String>,
    members: &[&TensorInfo],
    config: Option<&serde_json::Value>,
) -> Result<ComponentGuess, String> {
    let p = prefix.as_deref().unwrap_or("");
    let bytes = members.iter().map(|t| t.data_bytes()).sum();
    let (role, reason, architecture) = if is_decode_step(members, p) {
        let arch = guess_architecture(members, p, config).map_err(|e| {
            format!(
                "component `{name}` looks like a language model but {e}; give its config.json with --config"
            )
        })?;
        (
            "text_decode_step",
            "it has token embeddings, an output head or attention layers".to_string(),
            Some(arch),
        )
    } else {
        let (role, why) = role_from_words(p.trim_end_matches('.'));
        (role, why, None)
    };
    Ok(ComponentGuess {
        name,
        prefix,
        role,
        reason,
        tensors: members.len(),
        bytes,
        architecture,
    })
}

/// The role of a component that is not a decode step, from the words of its prefix.
fn role_from_words(prefix: &str) -> (&'static str, String) {
    let lower = prefix.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let has = |list: &[&str]| words.iter().any(|w| list.iter().any(|l| w.starts_with(l)));
    if has(&["audio", "speech", "whisper", "mel"]) {
        return (
            "audio_encoder",
            format!("its prefix `{prefix}` names audio"),
        );
    }
    if has(&["video"]) {
        return (
            "video_decoder",
            format!("its prefix `{prefix}` names video"),
        );
    }
    if has(&[
        "vision",
        "visual",
        "vit",
        "siglip",
        "clip",
        "encoder",
        "projector",
    ]) {
        return (
            "image_encoder",
            format!("its prefix `{prefix}` names a vision encoder"),
        );
    }
    if has(&["image", "vae", "decoder", "unet", "pixel"]) {
        return (
            "image_decoder",
            format!("its prefix `{prefix}` names an image decoder"),
        );
    }
    (
        "image_decoder",
        format!("no role word in `{prefix}`: a default, loaded on demand like every decoder"),
    )
}

fn config_u64(config: Option<&serde_json::Value>, key: &str) -> Option<u64> {
    let c = config?;
    let top = c.get(key).and_then(|v| v.as_u64());
    top.or_else(|| c.get("text_config")?.get(key)?.as_u64())
}

fn guess_architecture(
    members: &[&TensorInfo],
    prefix: &str,
    config: Option<&serde_json::Value>,
) -> Result<ArchitectureGuess, String> {
    let find = |pred: &dyn Fn(&str) -> bool| {
        members
            .iter()
            .find(|t| pred(&t.name[prefix.len()..]))
            .map(|t| t.shape.clone())
    };
    let embed = find(&|n| {
        (n.contains("embed_tokens") || n.contains("tok_embeddings")) && n.ends_with(".weight")
    })
    .or_else(|| find(&|n| n == "lm_head.weight"))
    .filter(|s| s.len() == 2);
    let k_proj = find(&|n| n.contains("k_proj") && n.ends_with(".weight")).filter(|s| s.len() == 2);
    let k_norm = find(&|n| n.contains("k_norm") && n.ends_with(".weight")).filter(|s| s.len() == 1);
    let mut notes = Vec::new();
    let mut from_config = true;
    let mut pick = |key: &str, config_value: Option<u64>, shape_value: Option<(u64, String)>| {
        if let Some(v) = config_value.filter(|v| *v > 0) {
            return Ok(v);
        }
        from_config = false;
        match shape_value {
            Some((v, why)) if v > 0 => {
                notes.push(format!("{key} {v}: {why}"));
                Ok(v)
            }
            _ => Err(format!(
                "`architecture.{key}` is neither in a config.json nor in the shapes"
            )),
        }
    };
    let hidden_size = pick(
        "hidden_size",
        config_u64(config, "hidden_size"),
        embed
            .as_ref()
            .map(|s| (s[1], "from the token embedding's shape".into())),
    )?;
    let vocab_size = pick(
        "vocab_size",
        config_u64(config, "vocab_size"),
        embed
            .as_ref()
            .map(|s| (s[0], "from the token embedding's shape".into())),
    )?;
    let layers = pick(
        "layers",
        config_u64(config, "num_hidden_layers"),
        layer_count(members, prefix).map(|n| (n, "the numbered layers counted".into())),
    )?;
    let heads = config_u64(config, "num_attention_heads");
    let head_dim_from_config = config_u64(config, "head_dim")
        .or_else(|| Some(config_u64(config, "hidden_size")? / heads.filter(|h| *h > 0)?));
    let kv_width = k_proj.as_ref().map(|s| s[0]);
    let head_dim_from_shapes = k_norm
        .as_ref()
        .map(|s| (s[0], "from k_norm's shape".into()))
        .or_else(|| {
            let w = kv_width?;
            let d = [128u64, 64, 32]
                .into_iter()
                .find(|d| w % d == 0)
                .unwrap_or(w);
            Some((
                d,
                format!("guessed, the key projection is {w} wide: check it against the model"),
            ))
        });
    let kv_head_dim = pick("kv_head_dim", head_dim_from_config, head_dim_from_shapes)?;
    let kv_heads = pick(
        "kv_heads",
        config_u64(config, "num_key_value_heads").or(heads),
        kv_width.map(|w| {
            (
                (w / kv_head_dim).max(1),
                format!("the key projection's {w} rows over kv_head_dim"),
            )
        }),
    )?;
    Ok(ArchitectureGuess {
        layers,
        kv_heads,
        kv_head_dim,
        hidden_size,
        vocab_size,
        notes,
        from_config,
    })
}

/// What [`render_manifest`] writes besides the components.
#[derive(Debug, Clone)]
pub struct StarterOptions<'a> {
    /// Package name (`[a-z0-9][a-z0-9_-]*`).
    pub package_name: String,
    /// The checkpoint's files (one, or the shards a shard index names) as written in
    /// `source.safetensors` (relative to the manifest, `/`).
    pub shards: &'a [String],
    /// Its file name, for the header comment.
    pub checkpoint_name: &'a str,
    /// `source.config` of the decode step (relative to the manifest), when a config was found.
    pub config: Option<&'a str>,
    /// `max_position_embeddings` of the config.
    pub max_position_embeddings: Option<u64>,
    /// The checkpoint's own quantized format and group size (`int4`, 64), when it has one.
    pub source_format: Option<(String, u32)>,
}

/// Pads `line` to the comment column and appends `# comment`.
fn commented(out: &mut String, line: &str, comment: &str) {
    const COLUMN: usize = 38;
    out.push_str(line);
    if !comment.is_empty() {
        let pad = COLUMN.saturating_sub(line.chars().count()).max(1);
        out.push_str(&" ".repeat(pad));
        out.push_str("# ");
        out.push_str(comment);
    }
    out.push('\n');
}

/// A YAML double-quoted string (JSON's escaping is valid YAML).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The starter manifest's text: the schema line, a comment on every key, the components and
/// two tiers (`iphone-3gb`: 3 GiB device, 1.4 GiB limit; `iphone-6gb`: 6 GiB, 3 GiB).
pub fn render_manifest(components: &[ComponentGuess], o: &StarterOptions) -> String {
    let mut s = String::new();
    s.push_str("# yaml-language-server: $schema=omnipack-manifest.schema.json\n");
    s.push_str(&format!(
        "#\n# Written by `omnipack init` from {}: a starting point, not a decision.\n\
         # The component roles, the formats and the two tiers are guesses to review; every key\n\
         # is described in docs/manifest.md of omnipack, and on hover in an editor once the\n\
         # schema named above is written next to this file\n\
         # (`omnipack schema > omnipack-manifest.schema.json`). Then `omnipack validate` and\n\
         # `omnipack plan` this file. Paths are relative to it.\n",
        o.checkpoint_name.replace('\n', " ")
    ));
    commented(&mut s, "omnipack: 1", "manifest format version");
    commented(&mut s, "package:", "identity, recorded in the summary");
    commented(
        &mut s,
        &format!("  name: {}", o.package_name),
        "becomes file names: [a-z0-9][a-z0-9_-]*",
    );
    commented(&mut s, "  version: 1.0.0", "your release's version");
    commented(
        &mut s,
        &format!(
            "  bundle_id: com.example.{}",
            o.package_name.replace('_', "-")
        ),
        "your app's reverse-DNS id (a placeholder)",
    );
    commented(
        &mut s,
        "runtime_overhead: 300MiB",
        "app + runtime baseline in every tier: measure your app",
    );
    s.push('\n');
    commented(
        &mut s,
        "components:",
        "what the app ships, one per tensor prefix",
    );
    for c in components {
        s.push_str(&format!(
            "  # {} tensors ({}); role guessed: {}\n",
            c.tensors,
            crate::format_bytes(c.bytes),
            c.reason
        ));
        commented(
            &mut s,
            &format!("  - name: {}", c.name),
            "unique; becomes file names",
        );
        commented(
            &mut s,
            &format!("    role: {}", c.role),
            "guessed: text_decode_step, image_decoder, video_decoder, image_encoder, audio_encoder",
        );
        if c.role == "text_decode_step" {
            commented(
                &mut s,
                "    runtime: mlx",
                "mlx, coreml, mlc, llama_cpp, custom",
            );
        }
        commented(&mut s, "    source:", "where the weights come from");
        let (value, what) = match o.shards {
            [one] => (quoted(one), "the checkpoint, relative to this file"),
            many => (
                format!(
                    "[{}]",
                    many.iter()
                        .map(|p| quoted(p))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "the shards of the checkpoint's index, relative to this file",
            ),
        };
        commented(&mut s, &format!("      safetensors: {value}"), what);
        if let Some(p) = &c.prefix {
            commented(
                &mut s,
                &format!("      prefix: {}", quoted(p)),
                "takes the tensors starting with it, and strips it",
            );
        }
        if let Some(a) = &c.architecture {
            if let Some(cfg) = o.config {
                commented(
                    &mut s,
                    &format!("      config: {}", quoted(cfg)),
                    "copied into the bundle's config.json",
                );
            }
            let from = if a.from_config {
                "from config.json"
            } else if o.config.is_some() {
                "from config.json and the tensor shapes (notes below)"
            } else {
                "from the tensor shapes (notes below)"
            };
            commented(
                &mut s,
                &format!(
                    "    architecture: {{ layers: {}, kv_heads: {}, kv_head_dim: {}, hidden_size: {}, vocab_size: {} }}",
                    a.layers, a.kv_heads, a.kv_head_dim, a.hidden_size, a.vocab_size
                ),
                from,
            );
            for n in &a.notes {
                s.push_str(&format!("    #   {n}\n"));
            }
            let (len, why) = match o.max_position_embeddings {
                Some(m) if m > 0 && m <= 4096 => (m, "the config's max_position_embeddings"),
                Some(m) if m > 0 => (4096, "longest context (the config allows more)"),
                _ => (4096, "longest context: a guess"),
            };
            commented(&mut s, &format!("    max_seq_len: {len}"), why);
            commented(
                &mut s,
                "    delivery: on_demand",
                "each tier's variant is its own asset pack",
            );
            commented(
                &mut s,
                "    residency: always",
                "loaded at launch and kept; activation_memory is derived",
            );
        } else {
            commented(
                &mut s,
                "    residency: lazy",
                "loaded when first used; set activation_memory",
            );
        }
        commented(&mut s, "    quantization:", "how the weights are stored");
        match &o.source_format {
            Some((f, g)) => {
                commented(
                    &mut s,
                    &format!("      format: {f}"),
                    "the checkpoint's own format: passes through",
                );
                commented(
                    &mut s,
                    &format!("      group_size: {g}"),
                    "the checkpoint's",
                );
            }
            None => {
                let list = if c.role == "text_decode_step" {
                    "[f16, int8, int4]"
                } else {
                    "[f16, int8]"
                };
                commented(
                    &mut s,
                    &format!("      format: {list}"),
                    "best first: each tier takes the first that fits",
                );
                commented(&mut s, "      group_size: 64", "32, 64 or 128");
                commented(
                    &mut s,
                    "      keep: [\"*norm*\", \"*.bias\"]",
                    "left unquantized",
                );
            }
        }
    }
    s.push('\n');
    commented(
        &mut s,
        "tiers:",
        "device classes; each ships every component",
    );
    for (name, device, limit, headroom) in [
        ("iphone-3gb", "3GiB", "1.4GiB", "64MiB"),
        ("iphone-6gb", "6GiB", "3GiB", "128MiB"),
    ] {
        commented(&mut s, &format!("  - name: {name}"), "a device class");
        commented(
            &mut s,
            &format!("    device_memory: {device}"),
            "physical memory",
        );
        commented(
            &mut s,
            &format!("    memory_limit: {limit}"),
            "what iOS lets the app use before it ends it",
        );
        commented(
            &mut s,
            &format!("    min_headroom: {headroom}"),
            "kept free below memory_limit",
        );
        if name == "iphone-3gb" && components.iter().any(|c| c.architecture.is_some()) {
            commented(
                &mut s,
                "    max_seq_len: 2048",
                "a shorter context on small phones",
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnipack_quant::Dtype;

    fn t(name: &str, shape: &[u64]) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            dtype: Dtype::F16,
            shape: shape.to_vec(),
        }
    }

    fn llm(prefix: &str, layers: u64, kv_rows: u64) -> Vec<TensorInfo> {
        let mut v = vec![
            t(&format!("{prefix}model.embed_tokens.weight"), &[1000, 256]),
            t(&format!("{prefix}lm_head.weight"), &[1000, 256]),
            t(&format!("{prefix}model.norm.weight"), &[256]),
        ];
        for i in 0..layers {
            v.push(t(
                &format!("{prefix}model.layers.{i}.self_attn.k_proj.weight"),
                &[kv_rows, 256],
            ));
        }
        v
    }

    #[test]
    fn a_plain_language_model_is_one_text_component_without_prefix() {
        let c = guess_components(&llm("", 3, 128), None).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].name, "text");
        assert_eq!(c[0].prefix, None);
        assert_eq!(c[0].role, "text_decode_step");
        let a = c[0].architecture.as_ref().unwrap();
        assert_eq!(
            (
                a.layers,
                a.kv_heads,
                a.kv_head_dim,
                a.hidden_size,
                a.vocab_size
            ),
            (3, 1, 128, 256, 1000)
        );
        assert!(!a.from_config);
        assert!(a.notes.iter().any(|n| n.contains("guessed")));
    }

    #[test]
    fn config_values_win_over_shapes() {
        let config = serde_json::json!({
            "hidden_size": 256, "num_hidden_layers": 3, "num_attention_heads": 8,
            "num_key_value_heads": 2, "vocab_size": 1000
        });
        let c = guess_components(&llm("", 3, 64), Some(&config)).unwrap();
        let a = c[0].architecture.as_ref().unwrap();
        assert_eq!((a.kv_heads, a.kv_head_dim), (2, 32));
        assert!(a.from_config && a.notes.is_empty());
    }

    #[test]
    fn prefixes_become_components_with_roles_from_their_words() {
        let mut all = llm("text.", 2, 64);
        all.push(t("image.blocks.0.fc1.weight", &[8, 8]));
        all.push(t("video.temporal.weight", &[8, 8]));
        all.push(t("vision_tower.patch.weight", &[8, 8]));
        all.push(t("audio.conv.weight", &[8, 8]));
        all.push(t("Extra.w", &[8]));
        let c = guess_components(&all, None).unwrap();
        let got: Vec<(&str, Option<&str>, &str)> = c
            .iter()
            .map(|c| (c.name.as_str(), c.prefix.as_deref(), c.role))
            .collect();
        assert_eq!(
            got,
            [
                ("text", Some("text."), "text_decode_step"),
                ("extra", Some("Extra."), "image_decoder"),
                ("audio", Some("audio."), "audio_encoder"),
                ("image", Some("image."), "image_decoder"),
                ("video", Some("video."), "video_decoder"),
                ("vision_tower", Some("vision_tower."), "image_encoder"),
            ]
        );
        assert_eq!(c[0].architecture.as_ref().unwrap().layers, 2);
    }

    #[test]
    fn a_language_model_without_embeddings_or_keys_is_an_error_naming_the_key() {
        let tensors = vec![t("text.lm_head.weight", &[10]), t("image.w", &[4])];
        let e = guess_components(&tensors, None).unwrap_err();
        assert!(e.contains("`text`") && e.contains("architecture."), "{e}");
        assert_eq!(guess_components(&[], None).unwrap_err(), "holds no tensors");
    }

    #[test]
    fn the_manifest_lists_shards_and_keeps_a_quantized_checkpoint_format() {
        let c = guess_components(&llm("", 2, 64), None).unwrap();
        let shards = [
            "ckpt/a.safetensors".to_string(),
            "ckpt/b.safetensors".into(),
        ];
        let text = render_manifest(
            &c,
            &StarterOptions {
                package_name: "my_model".into(),
                shards: &shards,
                checkpoint_name: "model.safetensors.index.json",
                config: None,
                max_position_embeddings: None,
                source_format: Some(("int4".into(), 64)),
            },
        );
        assert!(
            text.starts_with("# yaml-language-server: $schema="),
            "{text}"
        );
        assert!(
            text.contains(r#"safetensors: ["ckpt/a.safetensors", "ckpt/b.safetensors"]"#),
            "{text}"
        );
        assert!(text.contains("bundle_id: com.example.my-model "), "{text}");
        assert!(
            text.contains("format: int4 ") && text.contains("group_size: 64 "),
            "{text}"
        );
        assert!(
            !text.contains("config:") && !text.contains("prefix:"),
            "{text}"
        );
        assert!(text.contains("#   kv_head_dim 64: guessed"), "{text}");
    }

    #[test]
    fn names_are_sanitised() {
        assert_eq!(component_name("Vision.Tower"), "vision_tower");
        assert_eq!(component_name("_x"), "x");
    }
}
