//! AdamW and gradient clipping on the GPU against the oracle (torch's formulas).

mod common;
use common::{assert_close, gpu};
use memlayers::kernels::adamw::{
    record_clip, record_dense_step, record_sparse_step, AdamWState, AdamWStep, Clip,
};
use memlayers::kernels::value_grads::SparseRows;
use memlayers::reference::adamw as oracle;
use memlayers::rng::Rng;

fn step(t: u32) -> (AdamWStep, oracle::AdamWStep) {
    let (lr, beta1, beta2, eps, weight_decay) = (1e-2, 0.9, 0.95, 1e-8, 0.1);
    (
        AdamWStep {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            step: t,
        },
        oracle::AdamWStep {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            step: t,
        },
    )
}

#[test]
fn dense_adamw_with_clipping_matches_oracle_over_steps() {
    let g = gpu();
    let mut rng = Rng::new(5);
    // One parameter group of two tensors (odd sizes), clipped together.
    let sizes = [1500usize, 37];
    let mut params: Vec<Vec<f32>> = sizes.iter().map(|&n| rng.vec_normal(n, 1.0)).collect();
    let mut ms: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
    let mut vs = ms.clone();
    let bufs: Vec<[wgpu::Buffer; 3]> = params
        .iter()
        .map(|p| {
            [
                g.upload("p", p),
                g.upload("m", &vec![0f32; p.len()]),
                g.upload("v", &vec![0f32; p.len()]),
            ]
        })
        .collect();
    for t in 1..=4 {
        let grads: Vec<Vec<f32>> = sizes.iter().map(|&n| rng.vec_normal(n, 3.0)).collect();
        let max_norm = if t % 2 == 1 { 1.0 } else { 1e6 }; // clipped, then not
        let gbufs: Vec<wgpu::Buffer> = grads.iter().map(|x| g.upload("g", x)).collect();
        let mut enc = g.device.create_command_encoder(&Default::default());
        let pairs: Vec<(&wgpu::Buffer, u64)> =
            gbufs.iter().zip(&sizes).map(|(b, &n)| (b, n as u64)).collect();
        let clip = record_clip(g, &mut enc, &[&pairs], max_norm).unwrap();
        for (i, b) in bufs.iter().enumerate() {
            let state = AdamWState {
                param: &b[0],
                m: &b[1],
                v: &b[2],
            };
            record_dense_step(
                g,
                &mut enc,
                &state,
                &gbufs[i],
                sizes[i] as u64,
                Clip {
                    factors: &clip,
                    group: 0,
                },
                step(t).0,
            )
            .unwrap();
        }
        g.queue.submit([enc.finish()]);
        let refs: Vec<&[f32]> = grads.iter().map(|x| &x[..]).collect();
        let factor = oracle::clip_factor(&refs, max_norm);
        assert_close("clip factor", &g.read_f32_blocking(&clip, 1).unwrap(), &[factor]);
        for i in 0..sizes.len() {
            oracle::adamw(
                &mut params[i],
                &grads[i],
                &mut ms[i],
                &mut vs[i],
                factor,
                step(t).1,
            );
            assert_close(
                &format!("param {i} step {t}"),
                &g.read_f32_blocking(&bufs[i][0], sizes[i]).unwrap(),
                &params[i],
            );
            assert_close(
                &format!("m {i} step {t}"),
                &g.read_f32_blocking(&bufs[i][1], sizes[i]).unwrap(),
                &ms[i],
            );
            assert_close(
                &format!("v {i} step {t}"),
                &g.read_f32_blocking(&bufs[i][2], sizes[i]).unwrap(),
                &vs[i],
            );
        }
    }
}

#[test]
fn lazy_row_update_touches_only_listed_rows() {
    let g = gpu();
    let mut rng = Rng::new(6);
    let (rows, v_dim) = (50usize, 7usize);
    let mut table = rng.vec_normal(rows * v_dim, 1.0);
    let (mut m, mut v) = (vec![0f32; rows * v_dim], vec![0f32; rows * v_dim]);
    let bufs = [g.upload("p", &table), g.upload("m", &m), g.upload("v", &v)];
    // Rows 3, 17, 40 have gradients; capacity 5 with 3 listed.
    let listed = [3u32, 17, 40];
    let grad_rows = rng.vec_normal(5 * v_dim, 1.0);
    let sparse = SparseRows {
        slots: g.upload("slots", &[3u32, 17, 40, 0, 0]),
        rows: g.upload("rows", &grad_rows),
        count: g.upload("count", &[3u32]),
        capacity: 5,
        v_dim: v_dim as u32,
    };
    let mut enc = g.device.create_command_encoder(&Default::default());
    let clip = record_clip(g, &mut enc, &[&[(&sparse.rows, (3 * v_dim) as u64)]], 1e6).unwrap();
    let state = AdamWState {
        param: &bufs[0],
        m: &bufs[1],
        v: &bufs[2],
    };
    record_sparse_step(
        g,
        &mut enc,
        &state,
        rows as u64,
        &sparse,
        Clip {
            factors: &clip,
            group: 0,
        },
        step(1).0,
    )
    .unwrap();
    g.queue.submit([enc.finish()]);
    for (i, &r) in listed.iter().enumerate() {
        let s = r as usize * v_dim..(r as usize + 1) * v_dim;
        oracle::adamw(
            &mut table[s.clone()],
            &grad_rows[i * v_dim..(i + 1) * v_dim],
            &mut m[s.clone()],
            &mut v[s],
            1.0,
            step(1).1,
        );
    }
    assert_close(
        "lazily updated table",
        &g.read_f32_blocking(&bufs[0], rows * v_dim).unwrap(),
        &table,
    );
    assert_close(
        "moments",
        &g.read_f32_blocking(&bufs[1], rows * v_dim).unwrap(),
        &m,
    );
}

#[test]
fn sparse_rows_scatter_add_matches_oracle() {
    // dense[slot] += row for the listed rows only (count <= capacity), including a capacity
    // whose elements outnumber the capped grid, so invocations stride through several; rows
    // of whole 16-byte words take the 16-byte path.
    let g = gpu();
    let mut rng = Rng::new(8);
    for &(table_rows, capacity, count, v_dim) in &[
        (10usize, 4usize, 3usize, 5usize),
        (70, 64, 64, 64),
        (6000, 5000, 4000, 33),
        (6000, 5000, 4000, 32), // 16-byte path, striding
    ] {
        let mut order: Vec<u32> = (0..table_rows as u32).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let slots: Vec<u32> = order[..capacity].to_vec();
        let rows = rng.vec_normal(capacity * v_dim, 1.0);
        let mut want = rng.vec_normal(table_rows * v_dim, 1.0);
        let dense = g.upload("dense", &want);
        let sparse = SparseRows {
            slots: g.upload("slots", &slots),
            rows: g.upload("rows", &rows),
            count: g.upload("count", &[count as u32]),
            capacity: capacity as u32,
            v_dim: v_dim as u32,
        };
        let mut enc = g.device.create_command_encoder(&Default::default());
        sparse
            .record_scatter_add(g, &mut enc, &dense, table_rows as u64)
            .unwrap();
        g.queue.submit([enc.finish()]);
        for (r, &s) in slots[..count].iter().enumerate() {
            for c in 0..v_dim {
                want[s as usize * v_dim + c] += rows[r * v_dim + c];
            }
        }
        let got = g.read_f32_blocking(&dense, table_rows * v_dim).unwrap();
        assert_eq!(
            got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "table {table_rows} rows, capacity {capacity}, count {count}, v_dim {v_dim}"
        );
    }
}

#[test]
fn clip_factors_of_several_groups_in_one_recording_match_separate_ones() {
    let g = gpu();
    let mut rng = Rng::new(7);
    // Odd buffer counts per group, so that the two-buffer dispatches straddle groups; an
    // empty buffer is skipped.
    let groups: Vec<Vec<usize>> = vec![vec![1500, 37, 2049], vec![5000], vec![0, 3, 1024, 1025]];
    let data: Vec<Vec<Vec<f32>>> = groups
        .iter()
        .zip([0.05, 0.05, 0.001]) // the last group's norm is under max_norm: not clipped
        .map(|(sizes, scale)| sizes.iter().map(|&n| rng.vec_normal(n, scale)).collect())
        .collect();
    let bufs: Vec<Vec<wgpu::Buffer>> = data
        .iter()
        .map(|group| {
            group
                .iter()
                .map(|x| g.upload("g", &if x.is_empty() { vec![0.0] } else { x.clone() }))
                .collect()
        })
        .collect();
    let lists: Vec<Vec<(&wgpu::Buffer, u64)>> = bufs
        .iter()
        .zip(&data)
        .map(|(b, d)| b.iter().zip(d).map(|(b, x)| (b, x.len() as u64)).collect())
        .collect();
    let slices: Vec<&[(&wgpu::Buffer, u64)]> = lists.iter().map(|l| &l[..]).collect();
    let max_norm = 1.0;
    let mut enc = g.device.create_command_encoder(&Default::default());
    let together = record_clip(g, &mut enc, &slices, max_norm).unwrap();
    let apart: Vec<wgpu::Buffer> = slices
        .iter()
        .map(|s| record_clip(g, &mut enc, &[s], max_norm).unwrap())
        .collect();
    g.queue.submit([enc.finish()]);
    let together = g.read_f32_blocking(&together, groups.len()).unwrap();
    for (i, group) in data.iter().enumerate() {
        let alone = g.read_f32_blocking(&apart[i], 1).unwrap()[0];
        assert_eq!(
            together[i].to_bits(),
            alone.to_bits(),
            "group {i}: one recording vs its own"
        );
        let refs: Vec<&[f32]> = group.iter().map(|x| &x[..]).collect();
        assert_close(
            &format!("clip factor {i}"),
            &together[i..i + 1],
            &[oracle::clip_factor(&refs, max_norm)],
        );
    }
    assert!(
        together.iter().any(|&f| f < 1.0) && together.contains(&1.0),
        "{together:?}"
    );
}

#[test]
fn masked_sgd_updates_only_masked_rows_with_the_clipped_gradient() {
    // Plain SGD on the rows of a mask (sparse memory fine-tuning's value update), over odd
    // shapes, clipped and not; rows outside the mask stay bit-identical.
    let g = gpu();
    let mut rng = Rng::new(9);
    for (rows, row_len, max_norm) in [
        (1usize, 1usize, 1e6f32),
        (37, 7, 0.5),
        (130, 65, 1e6),
        (9, 200, 2.0),
    ] {
        let table = rng.vec_normal(rows * row_len, 1.0);
        let grad = rng.vec_normal(rows * row_len, 3.0);
        let mask: Vec<u32> = (0..rows).map(|_| (rng.below(3) == 0) as u32).collect();
        let lr = 0.3f32;
        let (pb, gb, mb) = (
            g.upload("p", &table),
            g.upload("g", &grad),
            g.upload("mask", &mask),
        );
        let mut enc = g.device.create_command_encoder(&Default::default());
        let n = (rows * row_len) as u64;
        let clip = record_clip(g, &mut enc, &[&[(&gb, n)]], max_norm).unwrap();
        let clip_arg = Clip {
            factors: &clip,
            group: 0,
        };
        memlayers::kernels::sgd::record_masked_step(
            g,
            &mut enc,
            &pb,
            &gb,
            &mb,
            (rows as u32, row_len as u32),
            clip_arg,
            lr,
        )
        .unwrap();
        g.queue.submit([enc.finish()]);
        let factor = oracle::clip_factor(&[&grad], max_norm);
        let got = g.read_f32_blocking(&pb, rows * row_len).unwrap();
        let mut want = table.clone();
        for r in (0..rows).filter(|&r| mask[r] != 0) {
            for c in 0..row_len {
                let i = r * row_len + c;
                want[i] -= lr * factor * grad[i];
            }
        }
        assert_close(&format!("sgd {rows}x{row_len}"), &got, &want);
        for r in (0..rows).filter(|&r| mask[r] == 0) {
            assert_eq!(
                &got[r * row_len..(r + 1) * row_len],
                &table[r * row_len..(r + 1) * row_len]
            );
        }
    }
}

/// The dense step four elements an invocation (lengths that are multiples of 4) gives the
/// same bits as one element an invocation: the first 4k elements of a (4k + 1)-element
/// parameter, which takes the one-element path, against a 4k-element one, over three steps.
#[test]
fn adamw_dense_step_is_the_same_four_at_a_time() {
    let g = gpu();
    let mut rng = Rng::new(31);
    let n = 4 * 37;
    let start = rng.vec_normal(n + 1, 1.0);
    let clip = g.upload("clip factor", &[0.7f32]);
    let state = |len: usize| {
        [
            g.upload("p", &start[..len]),
            g.upload("m", &vec![0f32; len]),
            g.upload("v", &vec![0f32; len]),
        ]
    };
    let (quads, singles) = (state(n), state(n + 1));
    for t in 1..=3 {
        let grad = rng.vec_normal(n + 1, 3.0);
        let mut enc = g.device.create_command_encoder(&Default::default());
        for (b, len) in [(&quads, n), (&singles, n + 1)] {
            let gb = g.upload("g", &grad[..len]);
            let s = AdamWState {
                param: &b[0],
                m: &b[1],
                v: &b[2],
            };
            let clip = Clip {
                factors: &clip,
                group: 0,
            };
            record_dense_step(g, &mut enc, &s, &gb, len as u64, clip, step(t).0).unwrap();
        }
        g.queue.submit([enc.finish()]);
        for (i, name) in ["param", "m", "v"].iter().enumerate() {
            let a = g.read_u32_blocking(&quads[i], n).unwrap();
            let b = g.read_u32_blocking(&singles[i], n).unwrap();
            assert_eq!(a, b, "{name} after step {t}");
        }
    }
}

/// A group of more 1024-element blocks than one loop may add (a 100M-parameter model's
/// weights) clips by its whole norm; a small group beside it keeps its own.
#[test]
fn a_group_longer_than_one_loop_clips_by_its_whole_norm() {
    let g = gpu();
    let mut rng = Rng::new(11);
    let n = 4_000_000usize;
    let big = rng.vec_normal(n, 0.01);
    let small = rng.vec_normal(3000, 1.0);
    let (big_buf, small_buf) = (g.upload("big", &big), g.upload("small", &small));
    // The same buffer 13 times: 13 x 3,907 blocks, past the 49,152 one loop may add.
    let long: Vec<(&wgpu::Buffer, u64)> = (0..13).map(|_| (&big_buf, n as u64)).collect();
    let short = [(&small_buf, small.len() as u64)];
    let max_norm = 0.5;
    let mut enc = g.device.create_command_encoder(&Default::default());
    let clip = record_clip(g, &mut enc, &[&long, &short], max_norm).unwrap();
    g.queue.submit([enc.finish()]);
    let got = g.read_f32_blocking(&clip, 2).unwrap();
    let norm = |x: &[f32], times: f64| (times * x.iter().map(|&v| v as f64 * v as f64).sum::<f64>()).sqrt();
    for (i, want_norm) in [norm(&big, 13.0), norm(&small, 1.0)].into_iter().enumerate() {
        let want = (max_norm as f64 / (want_norm + 1e-6)).min(1.0);
        assert!(
            ((got[i] as f64 - want) / want).abs() < 1e-5,
            "group {i}: {} against {want}",
            got[i]
        );
    }
}
