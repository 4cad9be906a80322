//! `omnipack quantize`: one safetensors file (or shard set) to one quantized file, with the
//! same layout as in bundles.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use omnipack_quant::{
    Dtype, Method, QuantSpec, SafetensorsFile, SelectedTensor, SourceLayout, TensorInfo, Treatment,
    WeightFormat,
};

use omnipack_manifest::counted;

use super::CommandResult;

/// Arguments of `omnipack quantize`.
#[derive(Debug, clap::Args)]
pub struct QuantizeArgs {
    /// Input `.safetensors` file, or a `model.safetensors.index.json` shard index.
    pub input: PathBuf,
    /// Output `.safetensors` file (written to a temporary file and renamed).
    #[arg(short, long, value_name = "OUT.safetensors")]
    pub output: PathBuf,
    /// Target format of 2-D `*.weight` tensors.
    #[arg(long, value_name = "F", value_parser = ["f32", "f16", "bf16", "int2", "int3", "int4", "int6", "int8", "nf4", "fp4"])]
    pub format: String,
    /// Group size (MLX affine) or block size (NF4/FP4), along the last axis.
    #[arg(long, value_name = "G", default_value_t = 64, value_parser = parse_group_size)]
    pub group_size: u32,
    /// How MLX affine (int2..int8) scales and biases are chosen: `rtn` (bit-exact with
    /// `mx.quantize`) or `mse` (error-minimising, never worse per group; same layout).
    #[arg(long, value_name = "M", default_value = "rtn", value_parser = ["rtn", "mse"])]
    pub method: String,
    /// Tensor-name glob (`*`, `?`) kept out of quantization; repeatable.
    #[arg(long, value_name = "GLOB")]
    pub keep: Vec<String>,
    /// Dtype for kept float tensors (default: each tensor's own dtype).
    #[arg(long, value_name = "D", value_parser = ["f32", "f16", "bf16"])]
    pub keep_dtype: Option<String>,
    /// Print per-tensor quality: RMSE, max abs error, SQNR and relative RMS error against the
    /// source, as the consumer dequantizes it.
    #[arg(long)]
    pub report: bool,
    /// For an input that is already quantized (MLX affine, or bitsandbytes 4-bit as omnipack
    /// writes it) in another format than `--format`: dequantize it exactly as MLX does and
    /// quantize it again (the error compounds). Without it that is an error; the input's own
    /// format passes its tensors through byte for byte, and float formats dequantize.
    #[arg(long)]
    pub requantize: bool,
}

/// Every tensor of `input` (a file or a shard index), sorted by name, and its quantized
/// groups, recognised with the `config.json` next to it when there is one.
fn source(input: &Path) -> Result<(Vec<SelectedTensor>, SourceLayout), miette::Report> {
    let mut selected = Vec::new();
    let shards = omnipack_quant::resolve_shards(input).map_err(|e| miette::miette!("{e}"))?;
    for shard in shards {
        let file = Arc::new(SafetensorsFile::open(&shard).map_err(|e| miette::miette!("{e}"))?);
        selected.extend(SelectedTensor::with_prefix(&file, ""));
    }
    selected.sort_by(|a, b| a.output_name.cmp(&b.output_name));
    let config = input
        .parent()
        .map(|d| d.join("config.json"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let infos: Vec<TensorInfo> = selected
        .iter()
        .filter_map(|s| s.file.entry(&s.tensor).ok().map(|e| e.info.clone()))
        .collect();
    let read_small = |name: &str| -> Option<Vec<u8>> {
        let s = selected.iter().find(|s| s.output_name == name)?;
        let e = s.file.entry(&s.tensor).ok()?;
        (e.len <= 1 << 20).then(|| s.file.bytes(e).to_vec())
    };
    let layout = SourceLayout::recognise(&infos, config.as_ref(), &read_small);
    Ok((selected, layout))
}

fn parse_group_size(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(g @ (32 | 64 | 128)) => Ok(g),
        _ => Err(format!(
            "`{s}` is not a supported group size: use 32, 64 or 128"
        )),
    }
}

/// Runs `omnipack quantize`.
pub fn run(args: QuantizeArgs) -> CommandResult {
    let format = WeightFormat::parse(&args.format)
        .ok_or_else(|| miette::miette!("unknown format `{}`", args.format))?;
    let method = Method::parse(&args.method)
        .ok_or_else(|| miette::miette!("unknown method `{}`", args.method))?;
    let spec = QuantSpec {
        format,
        group_size: args.group_size,
        method,
        keep: args.keep.clone(),
        keep_dtype: args.keep_dtype.as_deref().and_then(Dtype::parse),
    };
    if !method.applies_to(format) {
        eprintln!(
            "note: --method {method} applies to the MLX affine formats int2..int8; {format} is written the same as with rtn"
        );
    }
    let start = Instant::now();
    let (selected, layout) = source(&args.input)?;
    let outcome = omnipack_quant::quantize_source_to_file(
        &selected,
        &layout,
        args.requantize,
        &spec,
        &args.output,
        &spec.format.metadata(),
    )
    .map_err(|e| match e {
        // The other errors name their file already.
        omnipack_quant::QuantError::AlreadyQuantized { .. } => {
            miette::miette!("{}: {e}", args.input.display())
        }
        e => miette::miette!("{e}"),
    })?;
    if let Some(source) = layout.describe() {
        let count = |t: Treatment| {
            layout
                .groups()
                .filter(|g| SourceLayout::treatment(g, &spec) == t)
                .count()
        };
        let (again, passed) = (count(Treatment::Requantize), count(Treatment::PassThrough));
        if again > 0 {
            eprintln!(
                "warning: the input is already quantized ({source}): {} dequantized and quantized again, so the error compounds; the quality below is measured against the dequantized input",
                counted(again, "tensor")
            );
        } else if passed > 0 {
            eprintln!(
                "note: the input is already quantized ({source}): {} passed through byte for byte",
                counted(passed, "quantized tensor")
            );
        } else {
            eprintln!("note: the input is already quantized ({source}): dequantized as MLX does");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if args.report {
        let name_w = outcome
            .tensors
            .iter()
            .map(|t| t.name.len())
            .max()
            .unwrap_or(6)
            .max(6);
        println!(
            "{:<name_w$}  {:>14}  {:>6}  {:>11}  {:>11}  {:>9}  {:>11}",
            "tensor", "shape", "dtype", "rmse", "max_abs", "sqnr_db", "rel_rms"
        );
        for t in &outcome.tensors {
            let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
            println!(
                "{:<name_w$}  {:>14}  {:>6}  {:>11.4e}  {:>11.4e}  {:>9.2}  {:>11.4e}",
                t.name,
                shape.join("x"),
                t.source_dtype.to_string(),
                t.stats.rmse(),
                t.stats.max_abs_err,
                t.stats.sqnr_db(),
                t.stats.rel_rms_error()
            );
        }
        let o = &outcome.overall;
        println!(
            "{:<name_w$}  {:>14}  {:>6}  {:>11.4e}  {:>11.4e}  {:>9.2}  {:>11.4e}",
            "overall",
            format!("{} params", o.count),
            "",
            o.rmse(),
            o.max_abs_err,
            o.sqnr_db(),
            o.rel_rms_error()
        );
    }
    eprintln!(
        "wrote {} ({} {}): {}, {} parameters, {} bytes ({} of tensor data), sha256 {} in {:.2}s",
        args.output.display(),
        format,
        if format.uses_groups() {
            format!("g{}", spec.group_size)
        } else {
            String::from("cast")
        },
        counted(outcome.outputs.len(), "tensor"),
        outcome.parameters,
        outcome.file_bytes,
        outcome.data_bytes,
        outcome.sha256,
        secs
    );
    let q = &outcome.quality;
    let label = if matches!(format, WeightFormat::Affine { .. }) {
        format!("quality ({method})")
    } else {
        String::from("quality")
    };
    match (q.sqnr_db, &q.worst_tensor, q.worst_sqnr_db) {
        (Some(db), Some(worst), Some(worst_db)) => eprintln!(
            "{label}: SQNR {db:.2} dB over {} measured tensors, relative RMS error {}; worst `{worst}` {worst_db:.2} dB",
            outcome.tensors.len(),
            if q.rel_rms_error >= 0.01 {
                format!("{:.4}", q.rel_rms_error)
            } else {
                format!("{:.3e}", q.rel_rms_error)
            }
        ),
        _ => eprintln!(
            "{label}: exact ({} measured tensors, no precision lost)",
            outcome.tensors.len()
        ),
    }
    Ok(ExitCode::SUCCESS)
}
