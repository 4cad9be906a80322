//! `omnipack quantize`: one safetensors file (or shard set) to one quantized file, with the
//! same layout as in bundles.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use omnipack_quant::{Dtype, QuantSpec, WeightFormat};

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
    /// Tensor-name glob (`*`, `?`) kept out of quantization; repeatable.
    #[arg(long, value_name = "GLOB")]
    pub keep: Vec<String>,
    /// Dtype for kept float tensors (default: each tensor's own dtype).
    #[arg(long, value_name = "D", value_parser = ["f32", "f16", "bf16"])]
    pub keep_dtype: Option<String>,
    /// Print per-tensor quality: RMSE, max abs error and SQNR against the source.
    #[arg(long)]
    pub report: bool,
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
    let spec = QuantSpec {
        format,
        group_size: args.group_size,
        keep: args.keep.clone(),
        keep_dtype: args.keep_dtype.as_deref().and_then(Dtype::parse),
    };
    let start = Instant::now();
    let outcome = omnipack_quant::quantize_file(&args.input, &args.output, &spec, args.report)
        .map_err(|e| miette::miette!("{e}"))?;
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
            "{:<name_w$}  {:>14}  {:>6}  {:>11}  {:>11}  {:>9}",
            "tensor", "shape", "dtype", "rmse", "max_abs", "sqnr_db"
        );
        for t in &outcome.tensors {
            let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
            println!(
                "{:<name_w$}  {:>14}  {:>6}  {:>11.4e}  {:>11.4e}  {:>9.2}",
                t.name,
                shape.join("x"),
                t.source_dtype.to_string(),
                t.stats.rmse(),
                t.stats.max_abs_err,
                t.stats.sqnr_db()
            );
        }
        let o = &outcome.overall;
        println!(
            "{:<name_w$}  {:>14}  {:>6}  {:>11.4e}  {:>11.4e}  {:>9.2}",
            "overall",
            format!("{} params", o.count),
            "",
            o.rmse(),
            o.max_abs_err,
            o.sqnr_db()
        );
    }
    eprintln!(
        "wrote {} ({} {}): {} tensors, {} parameters, {} bytes ({} of tensor data), sha256 {} in {:.2}s",
        args.output.display(),
        format,
        if format.uses_groups() {
            format!("g{}", spec.group_size)
        } else {
            String::from("cast")
        },
        outcome.outputs.len(),
        outcome.parameters,
        outcome.file_bytes,
        outcome.data_bytes,
        outcome.sha256,
        secs
    );
    Ok(ExitCode::SUCCESS)
}
