//! Asking a trained model one question: its greedy answer, and what each memory head read
//! to produce the answer's first byte (the page's heatmap).

use crate::demo::argmax;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
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
        let logits = gpu.read_f32(&fwd.logits, seq * c.vocab).await?;
        if out.is_empty() {
            for (layer, acts) in fwd.memory_lookups() {
                let m = c.memory.as_ref().expect("memory layers have a memory config");
                let per_row = m.heads * m.knn;
                let slots = gpu.read_u32(&acts.indices, seq * per_row).await?;
                let weights = gpu.read_f32(&acts.weights, seq * per_row).await?;
                let last = (seq - 1) * per_row;
                for head in 0..m.heads {
                    let at = last + head * m.knn;
                    reads.push(MemoryRead {
                        layer,
                        head,
                        slots: slots[at..at + m.knn].to_vec(),
                        weights: weights[at..at + m.knn].to_vec(),
                    });
                }
            }
        }
        let next = argmax(&logits[(seq - 1) * c.vocab..seq * c.vocab]);
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
