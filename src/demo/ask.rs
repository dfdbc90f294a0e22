//! Asking a trained model one question: its greedy answer, and what each memory head read
//! to produce the answer's first byte (the page's heatmap).

use crate::demo::argmax;
use crate::error::{Error, Result};
use crate::kernels::Gpu;
use crate::model::Model;

/// One memory head's read at one position: the selected slots in order and their softmax
/// weights (which sum to 1 per head).
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryRead {
    pub layer: usize,
    pub head: usize,
    pub slots: Vec<u32>,
    pub weights: Vec<f32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// The greedy continuation, up to and including the first '.' or newline.
    pub text: String,
    /// Every memory head's read at the prompt's last position (empty for dense models).
    pub reads: Vec<MemoryRead>,
}

/// Greedy decoding of `prompt` (bytes) for at most `max_bytes` bytes, stopping after a '.'
/// or a newline, or at the model's context length. One full forward pass per byte: answers
/// are a few bytes long, and the memory reads come from the first pass.
pub async fn ask(model: &Model, gpu: &Gpu, prompt: &str, max_bytes: usize) -> Result<Answer> {
    let c = &model.config;
    let mut tokens: Vec<u32> = prompt.bytes().map(u32::from).collect();
    if tokens.is_empty() {
        return Err(Error::Config("the question is empty".into()));
    }
    if tokens.len() >= c.max_seqlen {
        return Err(Error::Config(format!(
            "the question is {} bytes; this model reads at most {}",
            tokens.len(),
            c.max_seqlen - 1
        )));
    }
    c.check_ids("question", &tokens)?;
    let (mut out, mut reads) = (Vec::new(), Vec::new());
    while out.len() < max_bytes && tokens.len() < c.max_seqlen {
        let seq = tokens.len();
        let tb = gpu.upload("question", &tokens);
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let fwd = model.record_forward(gpu, &mut encoder, &tb, 1, seq as u32)?;
        gpu.queue.submit([encoder.finish()]);
        // Only the last position matters: its logits, and (first pass) its memory reads.
        let logits = last_row_f32(gpu, &fwd.logits, seq, c.vocab).await?;
        if out.is_empty() {
            for (layer, acts) in fwd.memory_lookups() {
                let m = c.memory.as_ref().expect("memory layers have a memory config");
                let per_row = m.heads * m.knn;
                let slots: Vec<u32> =
                    bytemuck::pod_collect_to_vec(&last_row(gpu, &acts.indices, seq, per_row).await?);
                let weights = last_row_f32(gpu, &acts.weights, seq, per_row).await?;
                for head in 0..m.heads {
                    let at = head * m.knn;
                    reads.push(MemoryRead {
                        layer,
                        head,
                        slots: slots[at..at + m.knn].to_vec(),
                        weights: weights[at..at + m.knn].to_vec(),
                    });
                }
            }
        }
        let next = argmax(&logits);
        // Ids past the byte range (models with a larger vocabulary) show as U+FFFD.
        out.push(u8::try_from(next).unwrap_or(0xFF));
        tokens.push(next);
        if next == u32::from(b'.') || next == u32::from(b'\n') {
            break;
        }
    }
    Ok(Answer {
        text: String::from_utf8_lossy(&out).into_owned(),
        reads,
    })
}

/// The bytes of row `rows - 1` of a `[rows, width]` buffer of 4-byte elements.
async fn last_row(gpu: &Gpu, buffer: &wgpu::Buffer, rows: usize, width: usize) -> Result<Vec<u8>> {
    let bytes = (width * 4) as u64;
    gpu.read_bytes(buffer, (rows - 1) as u64 * bytes, bytes).await
}

async fn last_row_f32(gpu: &Gpu, buffer: &wgpu::Buffer, rows: usize, width: usize) -> Result<Vec<f32>> {
    Ok(bytemuck::pod_collect_to_vec(
        &last_row(gpu, buffer, rows, width).await?,
    ))
}
