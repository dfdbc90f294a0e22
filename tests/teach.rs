//! Teaching (sparse memory fine-tuning and its baselines) on the GPU: which parameters and
//! value rows a step may change, against the ranking computed on the host.

mod common;
use common::gpu;
use memlayers::demo::{training_batch, Fact, KnowledgeBase};
use memlayers::io::TensorFile;
use memlayers::model::{LMTransformerArgs, LayerSlotCounts, ModelWeights, SlotCounts};
use memlayers::params::Group;
use memlayers::rng::Rng;
use memlayers::teach::{rank_rows, table_readers, Background, Method, ReadsAt, TeachConfig, Teacher};
use memlayers::train::ValueOptimizer;

const SEQ: usize = 32;
const BATCH: usize = 4;

fn weights(peer: bool, shared: bool) -> ModelWeights {
    let json = format!(
        r#"{{"dim": 32, "n_layers": 3, "n_heads": 1, "vocab_size": 256, "multiple_of": 32, "max_seqlen": {SEQ},
        "productkey_args": {{"is_enabled": true, "layers": "1,2", "mem_n_keys": 8, "mem_heads": 2, "mem_knn": 4,
        "mem_k_dim": 16, "peer_variant": {peer}, "swilu_projection": {}, "mem_share_values": {shared}}}}}"#,
        !peer
    );
    ModelWeights::init(&LMTransformerArgs::from_json(&json).unwrap().resolve().unwrap()).unwrap()
}

fn facts() -> Vec<Fact> {
    KnowledgeBase::synthetic(3, 11).facts
}

fn background(w: &ModelWeights, seed: u64) -> SlotCounts {
    let mut rng = Rng::new(seed);
    let n = w.config.memory.as_ref().unwrap().n_values();
    SlotCounts {
        tokens: 500,
        batches: 20,
        layers: w
            .config
            .memory_layers
            .iter()
            .map(|&layer| LayerSlotCounts {
                layer,
                reads: (0..n).map(|_| rng.below(200)).collect(),
                batches: (0..n).map(|_| rng.below(21)).collect(),
            })
            .collect(),
    }
}

fn config(method: Method, optimizer: ValueOptimizer) -> TeachConfig {
    TeachConfig {
        method,
        slots: 6,
        steps: 10,
        lr: if optimizer == ValueOptimizer::Sgd {
            0.5
        } else {
            1e-2
        },
        optimizer,
        reads_at: ReadsAt::Answers,
        lora: Default::default(),
        ranking: Default::default(),
    }
}

fn tensor<'a>(file: &'a TensorFile, name: &str) -> &'a [f32] {
    file.f32_with_shape(name, &[None, None])
        .or_else(|_| file.f32_with_shape(name, &[None]))
        .unwrap()
        .1
}

/// One step of `method`; checks that exactly the rows the host ranking chose changed in
/// every value table and that nothing else changed (memory methods), and returns the
/// number of rows chosen per table.
fn step_changes_only_the_chosen_rows(
    method: Method,
    optimizer: ValueOptimizer,
    peer: bool,
    shared: bool,
) -> Vec<usize> {
    let g = gpu();
    let w = weights(peer, shared);
    let counts = background(&w, 4);
    let mut teacher = Teacher::new(g, &w, config(method, optimizer), Some(&counts)).unwrap();
    let before = teacher.trainer.weights_blocking(g).unwrap();
    let (x, y) = training_batch(&facts(), &mut Rng::new(2), BATCH, SEQ);
    let reads = pollster::block_on(teacher.rows_read(g, (&x, &y), (BATCH, SEQ), ReadsAt::Answers)).unwrap();
    let bg = Background::new(&w.layout, &counts).unwrap();
    let top = (method == Method::SparseMemory).then_some(6);
    let masks: Vec<_> = reads
        .iter()
        .map(|(id, r)| (*id, rank_rows(r, bg.of(*id), top)))
        .collect();
    teacher.step_blocking(g, &x, &y, BATCH, SEQ).unwrap();
    let after = teacher.trainer.weights_blocking(g).unwrap();
    let v_dim = w.config.memory.as_ref().unwrap().v_dim;
    let mut chosen = Vec::new();
    for (id, spec) in w.layout.registry.iter() {
        let (b, a) = (tensor(&before, &spec.name), tensor(&after, &spec.name));
        if spec.group != Group::Values {
            assert_eq!(b, a, "{method:?}: {} changed", spec.name);
            continue;
        }
        let (_, mask) = masks.iter().find(|(t, _)| *t == id).unwrap();
        for (r, &m) in mask.iter().enumerate() {
            let rows = r * v_dim..(r + 1) * v_dim;
            assert_eq!(
                m != 0,
                b[rows.clone()] != a[rows],
                "{method:?} {optimizer:?}: {} row {r} (mask {m})",
                spec.name
            );
        }
        chosen.push(mask.iter().filter(|&&m| m != 0).count());
    }
    assert_eq!(teacher.rows_updated, chosen.iter().sum::<usize>());
    chosen
}

#[test]
fn sparse_memory_updates_only_the_top_ranked_rows() {
    for optimizer in [ValueOptimizer::Sgd, ValueOptimizer::AdamW] {
        assert_eq!(
            step_changes_only_the_chosen_rows(Method::SparseMemory, optimizer, false, true),
            vec![6]
        );
    }
    // A table per memory layer: each ranked on its own layer's reads.
    assert_eq!(
        step_changes_only_the_chosen_rows(Method::SparseMemory, ValueOptimizer::Sgd, false, false),
        vec![6, 6]
    );
    // PEER: both tables at the same rows.
    assert_eq!(
        step_changes_only_the_chosen_rows(Method::SparseMemory, ValueOptimizer::Sgd, true, true),
        vec![6, 6]
    );
}

#[test]
fn memory_method_updates_every_row_read_at_the_answers() {
    let chosen = step_changes_only_the_chosen_rows(Method::Memory, ValueOptimizer::Sgd, false, true);
    assert!(chosen[0] > 6, "{chosen:?}");
}

#[test]
fn rows_are_counted_at_answer_positions_only_and_tables_sum_their_layers() {
    let g = gpu();
    let w = weights(false, true);
    let teacher = Teacher::new(g, &w, config(Method::Memory, ValueOptimizer::Sgd), None).unwrap();
    let (x, y) = training_batch(&facts(), &mut Rng::new(2), BATCH, SEQ);
    let answers = y
        .iter()
        .filter(|&&t| t != memlayers::kernels::ops::IGNORE_TARGET)
        .count();
    let reads = pollster::block_on(teacher.rows_read(g, (&x, &y), (BATCH, SEQ), ReadsAt::Answers)).unwrap();
    let m = w.config.memory.as_ref().unwrap();
    // One shared table read by two layers: every answer position reads heads * knn rows in each.
    assert_eq!(reads.len(), 1);
    let total: u64 = reads[0].1.iter().map(|&c| c as u64).sum();
    assert_eq!(total, (answers * m.heads * m.knn * 2) as u64);
}

#[test]
fn background_idf_sums_the_layers_that_share_a_table() {
    let w = weights(false, true);
    let counts = background(&w, 8);
    let bg = Background::new(&w.layout, &counts).unwrap();
    let readers = table_readers(&w.layout);
    assert_eq!(readers.len(), 1);
    assert_eq!(readers[0].1, vec![1, 2]);
    let idf = bg.of(readers[0].0).unwrap();
    for (r, &got) in idf.iter().enumerate() {
        let b = (counts.layers[0].batches[r] + counts.layers[1].batches[r]) as f64;
        let want = ((2.0 * 20.0 + 1.0) / (b + 1.0)).ln() as f32;
        assert!((got - want).abs() <= 1e-6, "row {r}: {got} vs {want}");
    }
}

#[test]
fn full_teaching_moves_every_parameter() {
    let g = gpu();
    let w = weights(false, true);
    let mut teacher = Teacher::new(g, &w, config(Method::Full, ValueOptimizer::AdamW), None).unwrap();
    let before = teacher.trainer.weights_blocking(g).unwrap();
    let (x, y) = training_batch(&facts(), &mut Rng::new(2), BATCH, SEQ);
    teacher.step_blocking(g, &x, &y, BATCH, SEQ).unwrap();
    let after = teacher.trainer.weights_blocking(g).unwrap();
    for (_, spec) in w.layout.registry.iter() {
        assert_ne!(
            tensor(&before, &spec.name),
            tensor(&after, &spec.name),
            "{}",
            spec.name
        );
    }
}

#[test]
fn sparse_memory_steps_lower_the_loss_on_their_batch() {
    // The rows are updated along the gradient: repeating one batch, the loss falls.
    let g = gpu();
    let w = weights(false, true);
    let counts = background(&w, 4);
    let mut c = config(Method::SparseMemory, ValueOptimizer::Sgd);
    c.slots = 40;
    // At initialisation the value rows' gradients are small (the output projection is
    // random): a large rate shows the descent within ten steps.
    c.lr = 20.0;
    let mut teacher = Teacher::new(g, &w, c, Some(&counts)).unwrap();
    let (x, y) = training_batch(&facts(), &mut Rng::new(2), BATCH, SEQ);
    let losses: Vec<f32> = (0..10)
        .map(|_| teacher.step_blocking(g, &x, &y, BATCH, SEQ).unwrap())
        .collect();
    assert!(losses.windows(2).all(|p| p[1] < p[0]), "{losses:?}");
    assert!(losses[9] < losses[0] - 0.1, "{losses:?}");
}

#[test]
fn teaching_refuses_what_it_cannot_do() {
    let g = gpu();
    let w = weights(false, true);
    let no_background = Teacher::new(g, &w, config(Method::SparseMemory, ValueOptimizer::Sgd), None);
    assert!(no_background.err().unwrap().to_string().contains("slot-stats"));
    let dense = ModelWeights::init(
        &LMTransformerArgs::from_json(
            r#"{"dim": 32, "n_layers": 1, "n_heads": 1, "vocab_size": 256, "max_seqlen": 16}"#,
        )
        .unwrap()
        .resolve()
        .unwrap(),
    )
    .unwrap();
    let e = Teacher::new(g, &dense, config(Method::Memory, ValueOptimizer::Sgd), None);
    assert!(e.err().unwrap().to_string().contains("no memory layers"));
}

#[test]
fn reads_at_mistakes_count_only_the_answer_bytes_the_model_gets_wrong() {
    let g = gpu();
    let w = weights(false, true);
    let teacher = Teacher::new(g, &w, config(Method::Memory, ValueOptimizer::Sgd), None).unwrap();
    let (x, mut y) = training_batch(&facts(), &mut Rng::new(2), BATCH, SEQ);
    let (logits, _) = pollster::block_on(teacher.trainer.model.forward(g, &x, None, BATCH, SEQ)).unwrap();
    let vocab = w.config.vocab;
    let argmax = |i: usize| memlayers::demo::argmax(&logits[i * vocab..(i + 1) * vocab]);
    // Every other answer byte becomes what the model already predicts there.
    let ignore = memlayers::kernels::ops::IGNORE_TARGET;
    let answers: Vec<usize> = (0..y.len()).filter(|&i| y[i] != ignore).collect();
    for &i in answers.iter().step_by(2) {
        y[i] = argmax(i);
    }
    let wrong = answers.iter().filter(|&&i| argmax(i) != y[i]).count();
    assert!(wrong > 0 && wrong < answers.len(), "{wrong} of {}", answers.len());
    let m = w.config.memory.as_ref().unwrap();
    let total = |at| -> u64 {
        let reads = pollster::block_on(teacher.rows_read(g, (&x, &y), (BATCH, SEQ), at)).unwrap();
        reads[0].1.iter().map(|&c| c as u64).sum()
    };
    assert_eq!(total(ReadsAt::Mistakes), (wrong * m.heads * m.knn * 2) as u64);
    assert_eq!(
        total(ReadsAt::Answers),
        (answers.len() * m.heads * m.knn * 2) as u64
    );
}
