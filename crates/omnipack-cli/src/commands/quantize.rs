//! `omnipack quantize`: one safetensors file (or shard set) to one quantized file, with the
//! same layout as in bundles; or one Core ML `.mlpackage` to its compressed `.mlpackage`
//! (int8 per channel, int4 per block, bit-exact with coremltools 9.0).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use omnipack_coreml::{CompressionConfig, CompressionFormat, CompressionPlan, WeightAction};
use omnipack_quant::{
    Dtype, Method, QuantSpec, SafetensorsFile, SelectedTensor, SourceLayout, TensorInfo, Treatment,
    WeightFormat,
};

use omnipack_manifest::counted;

use super::CommandResult;

/// Arguments of `omnipack quantize`.
#[derive(Debug, clap::Args)]
pub struct QuantizeArgs {
    /// Input `.safetensors` file, a `model.safetensors.index.json` shard index, or a Core ML
    /// `.mlpackage` folder (an ML program).
    pub input: PathBuf,
    /// Output `.safetensors` file (written to a temporary file and renamed), or the
    /// `.mlpackage` folder to create for a Core ML input (it must not exist; written into a
    /// temporary folder and renamed).
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// Target format of 2-D `*.weight` tensors; for a `.mlpackage`: `int8` (per channel),
    /// `int4` (per block of `--group-size`) or `f16` (the model as it is, byte-reproducible).
    #[arg(long, value_name = "F", value_parser = ["f32", "f16", "bf16", "int2", "int3", "int4", "int6", "int8", "nf4", "fp4"])]
    pub format: String,
    /// Group size (MLX affine) or block size (NF4/FP4), along the last axis: 32, 64 or 128
    /// (default 64). For a `.mlpackage`, int4's block size along each weight's input axis: any
    /// size dividing that axis (default 64).
    #[arg(long, value_name = "G", value_parser = parse_group_size)]
    pub group_size: Option<u32>,
    /// How MLX affine (int2..int8) scales and biases are chosen: `rtn` (bit-exact with
    /// `mx.quantize`) or `mse` (error-minimising, never worse per group; same layout).
    #[arg(long, value_name = "M", default_value = "rtn", value_parser = ["rtn", "mse"])]
    pub method: String,
    /// Tensor-name glob (`*`, `?`) kept out of quantization; repeatable. For a `.mlpackage`,
    /// matched against weight names (the `const` operation's output name).
    #[arg(long, value_name = "GLOB")]
    pub keep: Vec<String>,
    /// Dtype for kept float tensors (default: each tensor's own dtype).
    #[arg(long, value_name = "D", value_parser = ["f32", "f16", "bf16"])]
    pub keep_dtype: Option<String>,
    /// Print per-tensor quality: RMSE, max abs error, SQNR and relative RMS error against the
    /// source, as the consumer dequantizes it. For a `.mlpackage`: every weight, compressed
    /// (with its operation, scale shape and bytes) or kept (and why).
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

/// The group size of a safetensors output when `--group-size` is not given.
const DEFAULT_GROUP_SIZE: u32 = 64;

/// Accepts any positive size here: which sizes apply depends on the input (32, 64 or 128 for
/// safetensors, checked in [`run`]; any divisor of the input axis for a Core ML int4 block).
fn parse_group_size(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(g) if g > 0 => Ok(g),
        _ => Err(format!(
            "`{s}` is not a supported group size: use 32, 64 or 128 (any positive block size for a `.mlpackage`)"
        )),
    }
}

/// A usage error (exit status 2, like clap's own), printed by clap.
fn usage_error(message: String) -> ! {
    clap::Error::raw(
        clap::error::ErrorKind::InvalidValue,
        format!("{message}\n\nFor more information, try '--help'.\n"),
    )
    .exit()
}

/// Whether `input` is a Core ML model: a folder (a `.mlpackage`) or a `.mlpackage`/`.mlmodel`
/// path.
fn is_core_ml(input: &Path) -> bool {
    input.is_dir()
        || input.extension().and_then(|e| e.to_str()).is_some_and(|e| {
            e.eq_ignore_ascii_case("mlpackage") || e.eq_ignore_ascii_case("mlmodel")
        })
}

/// Runs `omnipack quantize`.
pub fn run(args: QuantizeArgs) -> CommandResult {
    if is_core_ml(&args.input) {
        return run_core_ml(args);
    }
    let group_size = match args.group_size {
        None => DEFAULT_GROUP_SIZE,
        Some(g @ (32 | 64 | 128)) => g,
        Some(g) => usage_error(format!(
            "error: invalid value '{g}' for '--group-size <G>': `{g}` is not a supported group size: use 32, 64 or 128"
        )),
    };
    let format = WeightFormat::parse(&args.format)
        .ok_or_else(|| miette::miette!("unknown format `{}`", args.format))?;
    let method = Method::parse(&args.method)
        .ok_or_else(|| miette::miette!("unknown method `{}`", args.method))?;
    let spec = QuantSpec {
        format,
        group_size,
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

/// `omnipack quantize IN.mlpackage -o OUT.mlpackage --format int8|int4|f16`.
fn run_core_ml(args: QuantizeArgs) -> CommandResult {
    // The manifest's mapping of formats to Core ML compressions, so both agree.
    let format = omnipack_manifest::Format::ALL
        .iter()
        .find(|f| f.as_str() == args.format)
        .and_then(|&f| {
            omnipack_manifest::compression_format(
                f,
                args.group_size.unwrap_or(DEFAULT_GROUP_SIZE),
            )
        })
        .unwrap_or_else(|| {
            usage_error(format!(
                "error: invalid value '{}' for '--format <F>': a Core ML package ({}) is compressed to `int8`, `int4` or `f16`",
                args.format,
                args.input.display()
            ))
        });
    if args.method != "rtn" {
        usage_error(format!(
            "error: invalid value '{}' for '--method <M>': Core ML compression is coremltools' symmetric round-to-nearest (`rtn`)",
            args.method
        ));
    }
    if args.keep_dtype.is_some() {
        usage_error(String::from(
            "error: '--keep-dtype' does not apply to a Core ML package: kept weights stay as they are",
        ));
    }
    if args.group_size.is_some() && format.block_size().is_none() {
        eprintln!(
            "note: --group-size applies to int4 (the block size); {} is written without blocks",
            format.name()
        );
    }
    let config = CompressionConfig {
        format,
        keep: args.keep.clone(),
    };
    let start = Instant::now();
    let plan = omnipack_coreml::open(&args.input)
        .and_then(|model| omnipack_coreml::compress(&model, &config, &args.output))
        .map_err(|e| miette::miette!("{e}"))?;
    let secs = start.elapsed().as_secs_f64();
    if args.report {
        print_core_ml_report(&plan);
    }
    let op = plan.op.map(|op| op.name()).unwrap_or("no compression op");
    eprintln!(
        "wrote {} ({}, {op}, deployment target {}): {} of {} weights compressed, {} parameters, {} bytes of weights, weight.bin {} bytes in {:.2}s",
        args.output.display(),
        match format {
            CompressionFormat::Int4 { block_size } => format!("int4 g{block_size}"),
            other => other.name().to_string(),
        },
        plan.deployment_target,
        plan.compressed_count(),
        plan.weights.len(),
        plan.parameters,
        plan.weights_bytes,
        plan.weight_bin_bytes,
        secs
    );
    Ok(ExitCode::SUCCESS)
}

/// One line per weight of the plan: compressed (operation, scale shape, bytes) or kept (why).
fn print_core_ml_report(plan: &CompressionPlan) {
    let name_w = plan
        .weights
        .iter()
        .map(|w| w.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "{:<name_w$}  {:>14}  {:>5}  outcome",
        "weight", "shape", "dtype"
    );
    for w in &plan.weights {
        let shape: Vec<String> = w.shape.iter().map(|d| d.to_string()).collect();
        let outcome = match &w.action {
            WeightAction::Compressed(c) => {
                let scale: Vec<String> = c.scale_shape.iter().map(|d| d.to_string()).collect();
                format!(
                    "{} scale [{}], {} bytes",
                    c.op.name(),
                    scale.join(", "),
                    c.data_bytes + c.scale_bytes + c.zero_point_bytes
                )
            }
            WeightAction::Kept(reason) => format!("kept: {reason}"),
        };
        println!(
            "{:<name_w$}  {:>14}  {:>5}  {outcome}",
            w.name,
            shape.join("x"),
            w.data_type
        );
    }
}
