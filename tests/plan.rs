//! Step plans: after the first step of a shape, a training step, a forward and a decode step
//! create no buffer and no bind group (counted by `Gpu::counts`, the counting wrapper every
//! buffer and bind group of the crate goes through), and planned steps compute exactly what
//! unplanned ones do.

mod common;
use memlayers::gpu::{Counts, StepPlan};
use memlayers::model::{LMTransformerArgs, Model, ModelWeights};
use memlayers::rng::Rng;
use memlayers::train::{TrainConfig, Trainer};
use memlayers::Gpu;

const TINY: &str = r#"{"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 256, "multiple_of": 16,
    "max_seqlen": 16, "seed": 7,
    "productkey_args": {"is_enabled": true, "layers": "1", "mem_n_keys": 16, "mem_heads": 2, "mem_knn": 4, "mem_k_dim": 16}}"#;

fn weights() -> ModelWeights {
    ModelWeights::init(&LMTransformerArgs::from_json(TINY).unwrap().resolve().unwrap()).unwrap()
}

/// A `Gpu` of this test's own: the counts must not see other tests' work.
fn own_gpu() -> Gpu {
    Gpu::new_blocking().unwrap_or_else(|e| panic!("GPU tests need a wgpu adapter: {e}"))
}

fn batch(rng: &mut Rng, n: usize) -> (Vec<u32>, Vec<u32>) {
    let x = (0..n).map(|_| rng.below(256) as u32).collect();
    let y = (0..n).map(|_| rng.below(256) as u32).collect();
    (x, y)
}

fn nothing_created(what: &str, c: Counts) {
    assert_eq!(
        (c.buffers, c.bind_groups),
        (0, 0),
        "{what} after warm-up created {} buffers and {} bind groups",
        c.buffers,
        c.bind_groups
    );
}

#[test]
fn training_steps_allocate_nothing_after_the_first() {
    let g = own_gpu();
    let config = TrainConfig {
        steps: 10,
        lr: 3e-3,
        warmup: 2,
        ..Default::default()
    };
    for lazy_values in [false, true] {
        let config = TrainConfig {
            lazy_values,
            ..config.clone()
        };
        let mut t = Trainer::new(&g, &weights(), config).unwrap();
        let mut rng = Rng::new(5);
        let (x, y) = batch(&mut rng, 4 * 16);
        t.step_blocking(&g, &x, &y, 4, 16).unwrap();
        let before = g.counts();
        for _ in 0..3 {
            let (x, y) = batch(&mut rng, 4 * 16);
            t.submit_step(&g, &x, &y, 4, 16).unwrap();
        }
        let loss = t.last_loss_blocking(&g).unwrap();
        assert!(loss.is_finite());
        let per_step = g.counts() - before;
        nothing_created(&format!("a training step (lazy values {lazy_values})"), per_step);
        assert!(per_step.dispatches > 0);
    }
}

#[test]
fn forwards_and_decode_steps_allocate_nothing_after_the_first() {
    let g = own_gpu();
    let model = Model::new(&g, &weights()).unwrap();
    let mut rng = Rng::new(9);
    let (x, y) = batch(&mut rng, 2 * 8);
    pollster::block_on(model.forward(&g, &x, Some(&y), 2, 8)).unwrap();
    let before = g.counts();
    for _ in 0..3 {
        let (x, y) = batch(&mut rng, 2 * 8);
        pollster::block_on(model.forward(&g, &x, Some(&y), 2, 8)).unwrap();
    }
    nothing_created("a forward", g.counts() - before);

    // Prefill, then one token at a time: the second decode step onwards creates nothing.
    let mut cache = model.new_cache(&g);
    pollster::block_on(model.forward_with_cache(&g, &[1, 2, 3], &mut cache)).unwrap();
    pollster::block_on(model.forward_with_cache(&g, &[4], &mut cache)).unwrap();
    let before = g.counts();
    for t in 5..10 {
        pollster::block_on(model.forward_with_cache(&g, &[t], &mut cache)).unwrap();
    }
    nothing_created("a decode step", g.counts() - before);
}

/// Training through the step plan (reused buffers cleared each step, parameter blocks
/// rewritten) gives the weights of training with fresh buffers every step, bit for bit.
#[test]
fn planned_steps_equal_unplanned_steps_bit_for_bit() {
    for lazy_values in [false, true] {
        planned_equals_unplanned(lazy_values);
    }
}

fn planned_equals_unplanned(lazy_values: bool) {
    let g = common::gpu();
    let config = TrainConfig {
        steps: 6,
        lr: 3e-3,
        warmup: 2,
        value_lr: 1e-2,
        lazy_values,
        ..Default::default()
    };
    let mut planned = Trainer::new(g, &weights(), config.clone()).unwrap();
    let mut fresh = Trainer::new(g, &weights(), config).unwrap();
    let mut rng = Rng::new(11);
    for step in 0..6 {
        // The shape changes once midway: the plan re-creates what no longer fits.
        let (b, s) = if step < 3 { (4, 16) } else { (2, 8) };
        let (x, y) = batch(&mut rng, b * s);
        let planned_loss = planned.step_blocking(g, &x, &y, b, s).unwrap();
        let mut encoder = g.device.create_command_encoder(&Default::default());
        let (tb, yb) = (g.upload("tokens", &x), g.upload("targets", &y));
        let loss = fresh
            .record_step(g, &mut encoder, &tb, &yb, b as u32, s as u32, (b * s) as u32)
            .unwrap();
        g.queue.submit([encoder.finish()]);
        let per_row = g.read_f32_blocking(&loss, b * s).unwrap();
        let fresh_loss = per_row.iter().sum::<f32>() / (b * s) as f32;
        assert_eq!(
            planned_loss.to_bits(),
            fresh_loss.to_bits(),
            "loss at step {step}"
        );
    }
    let (a, b) = (
        planned.weights_blocking(g).unwrap(),
        fresh.weights_blocking(g).unwrap(),
    );
    for (name, t) in &a.tensors {
        assert!(
            t.data == b.tensors[name].data,
            "{name} differs (lazy values {lazy_values})"
        );
    }
}

/// A step in two submissions (`submit_gradients`, then `submit_update`: what teaching does to
/// pick the rows to update from the step's own forward) equals a whole step bit for bit, with
/// value rows set or not, and after its first creates no buffer and no bind group.
#[test]
fn split_steps_equal_whole_steps_bit_for_bit_and_allocate_nothing() {
    let g = own_gpu();
    let config = TrainConfig {
        steps: 6,
        lr: 3e-3,
        warmup: 2,
        value_lr: 1e-2,
        ..Default::default()
    };
    let mut whole = Trainer::new(&g, &weights(), config.clone()).unwrap();
    let mut split = Trainer::new(&g, &weights(), config).unwrap();
    let values = split.model.layout().values.clone();
    let mut rng = Rng::new(13);
    let mut before = None;
    for step in 0..6 {
        let (x, y) = batch(&mut rng, 4 * 16);
        // From step 3 on, only the even rows of each value table.
        if step == 3 {
            let masks: Vec<_> = values
                .iter()
                .map(|&id| {
                    let rows = whole.model.layout().registry.spec(id).shape[0];
                    (id, (0..rows).map(|r| (r % 2 == 0) as u32).collect::<Vec<u32>>())
                })
                .collect();
            whole.set_value_rows(Some(masks.clone())).unwrap();
            split.set_value_rows(Some(masks)).unwrap();
        }
        if step == 4 {
            before = Some(g.counts());
        }
        let want = whole.step_blocking(&g, &x, &y, 4, 16).unwrap();
        split.submit_gradients(&g, &x, &y, 4, 16).unwrap();
        split.submit_update(&g).unwrap();
        let got = split.last_loss_blocking(&g).unwrap();
        assert_eq!(want.to_bits(), got.to_bits(), "loss at step {step}");
    }
    // Steps 4 and 5 of both trainers, after each one's first step with value rows.
    nothing_created("split and whole steps", g.counts() - before.unwrap());
    let (a, b) = (
        whole.weights_blocking(&g).unwrap(),
        split.weights_blocking(&g).unwrap(),
    );
    for (name, t) in &a.tensors {
        assert!(t.data == b.tensors[name].data, "{name} differs");
    }
    assert!(split.submit_update(&g).is_err(), "an update without gradients");
}

/// Forwards through the model's plans (scratch buffers left dirty by the last forward, a
/// shape change in between) give the logits and loss of forwards with fresh buffers.
#[test]
fn planned_forwards_equal_unplanned_forwards_bit_for_bit() {
    let g = common::gpu();
    let model = Model::new(g, &weights()).unwrap();
    let mut rng = Rng::new(21);
    for (b, s) in [(2, 8), (2, 8), (1, 5), (2, 8)] {
        let (x, y) = batch(&mut rng, b * s);
        let (logits, loss) = pollster::block_on(model.forward(g, &x, Some(&y), b, s)).unwrap();
        let mut encoder = g.device.create_command_encoder(&Default::default());
        let xb = g.upload("tokens", &x);
        let fwd = model
            .record_forward(g, &mut encoder, &xb, b as u32, s as u32)
            .unwrap();
        g.queue.submit([encoder.finish()]);
        let fresh = g.read_f32_blocking(&fwd.logits, logits.len()).unwrap();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&logits), bits(&fresh), "logits of [{b}, {s}]");
        assert!(loss.unwrap().is_finite());
    }
}

/// A plan reused for a shape it was not made for is correct, and dispatches and copies in
/// one planned recording (one open pass, ended by the copy) run in order.
#[test]
fn a_plan_follows_the_requests_it_gets() {
    let g = common::gpu();
    let mut plan = StepPlan::new();
    let sums = |plan: &mut StepPlan, data: &[f32]| {
        let mut encoder = g.device.create_command_encoder(&Default::default());
        let y = g
            .record_planned(plan, &mut encoder, |encoder| {
                let x = g.upload("x", data);
                let y = g.storage("y", data.len() as u64 * 4);
                memlayers::kernels::ops::record_add(g, encoder, &x, &y, data.len() as u32)?;
                memlayers::kernels::ops::record_add(g, encoder, &x, &y, data.len() as u32)?;
                // A copy ends the recording's open pass; later dispatches see what it wrote.
                let z = g.storage("z", data.len() as u64 * 4);
                g.copy(encoder, (&y, 0), (&z, 0), data.len() as u64 * 4);
                memlayers::kernels::ops::record_add(g, encoder, &y, &z, data.len() as u32)?;
                memlayers::kernels::ops::record_add(g, encoder, &z, &y, data.len() as u32)?;
                Ok(y)
            })
            .unwrap();
        g.queue.submit([encoder.finish()]);
        g.read_f32_blocking(&y, data.len()).unwrap()
    };
    // y = 2x; z = y + y = 4x; y = y + z = 6x.
    assert_eq!(sums(&mut plan, &[1.0, 2.0, 3.0]), vec![6.0, 12.0, 18.0]);
    // Same shape: the zeroed buffers start at zero again, not at the last results.
    assert_eq!(sums(&mut plan, &[1.0, 1.0, 1.0]), vec![6.0, 6.0, 6.0]);
    assert_eq!(sums(&mut plan, &[5.0]), vec![30.0]);
    assert_eq!(sums(&mut plan, &[0.5; 70]), vec![3.0; 70]);
    assert!(!plan.is_empty());
}
