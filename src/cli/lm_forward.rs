//! `memlayers lm-forward`: a lingua checkpoint's logits (and loss and gradients) on the GPU.

use memlayers::io::{HostTensor, TensorData, TensorFile};
use memlayers::kernels::ops::CrossEntropy;
use memlayers::model::{LMTransformerArgs, ModelWeights};
use memlayers::{Error, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The model's tensors under lingua's names.
    #[arg(long, requires = "config", required_unless_present = "model")]
    pub weights: Option<PathBuf>,
    /// lingua LMTransformerArgs as JSON.
    #[arg(long, requires = "weights")]
    pub config: Option<PathBuf>,
    /// A model folder instead of --weights and --config: a lingua consolidated folder
    /// (consolidated.pth, params.json) or a memlayers checkpoint.
    #[arg(long, conflicts_with_all = ["weights", "config"])]
    pub model: Option<PathBuf>,
    /// `tokens` [batch, seq] (integers); optionally `targets` alike.
    #[arg(long)]
    pub input: PathBuf,
    /// Gets `logits` [batch, seq, vocab]; with targets also `loss` [1] and `grad.<name>`.
    #[arg(long)]
    pub output: PathBuf,
    /// Shard the memory's value tables by columns over these adapters (indices as
    /// `memlayers info` lists them; one may repeat): the same logits, loss and gradients.
    #[arg(long, value_delimiter = ',')]
    pub devices: Option<Vec<usize>>,
}

fn ids(file: &TensorFile, name: &str) -> Result<Option<(Vec<usize>, Vec<u32>)>> {
    let Some(t) = file.tensors.get(name) else {
        return Ok(None);
    };
    match &t.data {
        TensorData::I64(v) if t.shape.len() == 2 => {
            if let Some(i) = v.iter().position(|&x| x < 0 || x > u32::MAX as i64) {
                return Err(Error::tensor(
                    name,
                    "non-negative token ids",
                    format!("{} at flat index {i}", v[i]),
                ));
            }
            Ok(Some((t.shape.clone(), v.iter().map(|&x| x as u32).collect())))
        }
        _ => Err(Error::tensor(
            name,
            "integer [batch, seq]",
            format!("{:?} ({})", t.shape, t.stored_as),
        )),
    }
}

pub fn run(a: &Args) -> Result<()> {
    let weights = match (&a.model, &a.config, &a.weights) {
        (Some(dir), _, _) => super::model_dir::load(dir)?.weights,
        (None, Some(config_path), Some(weights_path)) => {
            let text = std::fs::read_to_string(config_path)
                .map_err(|e| Error::Format(format!("cannot read {}: {e}", config_path.display())))?;
            let config = LMTransformerArgs::from_json(&text)?.resolve()?;
            ModelWeights::from_tensors(&config, &TensorFile::read(weights_path)?)?
        }
        _ => return Err(Error::Config("give --model, or --weights and --config".into())),
    };
    let config = weights.config.clone();
    let input = TensorFile::read(&a.input)?;
    let (shape, tokens) = ids(&input, "tokens")?.ok_or_else(|| Error::MissingTensor("tokens".into()))?;
    let targets = ids(&input, "targets")?;
    if let Some((s, _)) = &targets {
        if *s != shape {
            return Err(Error::tensor(
                "targets",
                format!("{shape:?} (the shape of tokens)"),
                format!("{s:?}"),
            ));
        }
    }
    config.check_ids("tokens", &tokens)?;
    if let Some((_, t)) = &targets {
        config.check_ids("targets", t)?;
    }
    let (batch, seq) = (shape[0], shape[1]);
    let gpu = super::devices::main(a.devices.as_deref())?;
    let model = super::devices::model(&gpu, a.devices.as_deref(), &weights)?;
    let tb = gpu.upload("tokens", &tokens);
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    let fwd = model.record_forward(&gpu, &mut encoder, &tb, batch as u32, seq as u32)?;
    let rows = fwd.rows;
    let mut out = TensorFile::default();
    let mut grads = None;
    let loss_rows = gpu.storage("loss", rows as u64 * 4);
    if let Some((_, t)) = &targets {
        let target_buf = gpu.upload("targets", t);
        let d_logits = gpu.storage("grad logits", rows as u64 * config.vocab as u64 * 4);
        CrossEntropy {
            rows,
            vocab: config.vocab as u32,
            scale: 1.0 / rows as f32,
            logits: &fwd.logits,
            targets: &target_buf,
            loss: &loss_rows,
            grad: &d_logits,
        }
        .record(&gpu, &mut encoder)?;
        grads = Some(model.record_backward(&gpu, &mut encoder, &fwd, &d_logits)?);
    }
    gpu.queue.submit([encoder.finish()]);
    let logits = gpu.read_f32_blocking(&fwd.logits, rows as usize * config.vocab)?;
    out.insert("logits", HostTensor::f32(vec![batch, seq, config.vocab], logits));
    if let Some(grads) = grads {
        let per_row = gpu.read_f32_blocking(&loss_rows, rows as usize)?;
        out.insert(
            "loss",
            HostTensor::f32(vec![1], vec![per_row.iter().sum::<f32>() / rows as f32]),
        );
        for (id, spec) in model.layout().registry.iter() {
            out.insert(
                format!("grad.{}", spec.name),
                HostTensor::f32(
                    spec.shape.clone(),
                    pollster::block_on(model.read_gradient(&gpu, &grads, id))?,
                ),
            );
        }
    }
    out.write(&a.output)
}
