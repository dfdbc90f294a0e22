//! The transformer ops on the GPU against the CPU oracle, forward and backward.

mod common;
use common::{assert_close, gpu, gpu_with};
use memlayers::kernels::ops::{
    record_pack_f16, rope_inv_freq, rope_tables, Attention, CrossEntropy, RmsNorm, Rope, IGNORE_TARGET,
};
use memlayers::reference::ops::{self, AttentionDims};
use memlayers::rng::Rng;
use memlayers::Gpu;

fn submit(f: impl FnOnce(&mut wgpu::CommandEncoder)) {
    let g = gpu();
    let mut enc = g.device.create_command_encoder(&Default::default());
    f(&mut enc);
    g.queue.submit([enc.finish()]);
}

fn rng_residual(n: usize) -> Vec<f32> {
    Rng::new(n as u64).vec_normal(n, 1.0)
}

#[test]
fn rmsnorm_matches_oracle_in_both_variants_bit_for_bit() {
    // A workgroup per row (GPUs) and a row per invocation (CPU adapters; 16-byte loads where
    // d is a multiple of 4): both against the oracle, and bit-identical to each other.
    let other = gpu_with(|t| t.norm_rows = !t.norm_rows);
    let mut rng = Rng::new(1);
    for &(rows, d) in &[(1, 1), (3, 7), (17, 64), (130, 33), (5, 300), (2, 1000)] {
        let (x, w, dy) = (
            rng.vec_normal(rows * d, 1.0),
            rng.vec_normal(d, 1.0),
            rng.vec_normal(rows * d, 1.0),
        );
        let mut outputs = Vec::new();
        for g in [gpu(), &other] {
            let (xb, wb, dyb) = (g.upload("x", &x), g.upload("w", &w), g.upload("dy", &dy));
            let (yb, rb) = (
                g.storage("y", (rows * d * 4) as u64),
                g.storage("r", (rows * 4) as u64),
            );
            let (dxb, dwb) = (
                g.storage("dx", (rows * d * 4) as u64),
                g.storage("dw", (rows * d * 4) as u64),
            );
            let norm = RmsNorm {
                rows: rows as u32,
                d: d as u32,
                eps: 1e-5,
                x: &xb,
                weight: &wb,
                rstd: &rb,
            };
            let mut enc = g.device.create_command_encoder(&Default::default());
            norm.record_forward(g, &mut enc, &yb).unwrap();
            norm.record_backward(g, &mut enc, &dyb, &dxb, &dwb).unwrap();
            g.queue.submit([enc.finish()]);
            let what = |name: &str| format!("rmsnorm {name} {rows}x{d} norm_rows={}", g.tuning().norm_rows);
            let y = g.read_f32_blocking(&yb, rows * d).unwrap();
            assert_close(&what("y"), &y, &ops::rmsnorm(&x, &w, 1e-5));
            let (dx, dw) = ops::rmsnorm_backward(&x, &w, 1e-5, &dy);
            let got_dx = g.read_f32_blocking(&dxb, rows * d).unwrap();
            assert_close(&what("dx"), &got_dx, &dx);
            let rows_dw = g.read_f32_blocking(&dwb, rows * d).unwrap();
            let got_dw: Vec<f32> = (0..d)
                .map(|j| (0..rows).map(|r| rows_dw[r * d + j]).sum())
                .collect();
            assert_close(&what("dw"), &got_dw, &dw);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            // Accumulating into a residual gradient: exactly that gradient plus dx. The per-row
            // dw terms at an offset (a multiple of 4 or not: the 16-byte path takes only the
            // first).
            for offset in [5, 8] {
                let residual = rng_residual(rows * d);
                let acc = g.upload("residual grad", &residual);
                let mut enc = g.device.create_command_encoder(&Default::default());
                let dw_at = g.storage("dw at an offset", ((rows * d + offset) * 4) as u64);
                norm.record_backward_into(g, &mut enc, &dyb, (&acc, true), (&dw_at, offset as u64))
                    .unwrap();
                g.queue.submit([enc.finish()]);
                let summed: Vec<f32> = residual.iter().zip(&got_dx).map(|(a, b)| a + b).collect();
                assert_eq!(
                    bits(&g.read_f32_blocking(&acc, rows * d).unwrap()),
                    bits(&summed),
                    "{}",
                    what("accumulated dx")
                );
                assert_eq!(
                    bits(&g.read_f32_blocking(&dw_at, rows * d + offset).unwrap()[offset..]),
                    bits(&rows_dw),
                    "{}",
                    what("dw at an offset")
                );
            }
            outputs.push((bits(&y), bits(&got_dx), bits(&rows_dw)));
        }
        assert!(
            outputs[0] == outputs[1],
            "rmsnorm {rows}x{d}: the two variants differ"
        );
    }
}

#[test]
fn rope_matches_oracle_at_far_positions() {
    let g = gpu();
    let mut rng = Rng::new(2);
    for &(seq, heads, hd, pos0) in &[(1, 1, 2, 0), (5, 3, 8, 0), (7, 2, 64, 1000), (33, 4, 16, 3)] {
        let x = rng.vec_normal(seq * heads * hd, 1.0);
        let (cos, sin) = rope_tables(pos0 + seq, &rope_inv_freq(hd, 10000.0));
        let (xb, cb, sb) = (g.upload("x", &x), g.upload("cos", &cos), g.upload("sin", &sin));
        let (yb, zb) = (
            g.storage("y", (x.len() * 4) as u64),
            g.storage("z", (x.len() * 4) as u64),
        );
        let rope = |inverse| Rope {
            batch: 1,
            seq: seq as u32,
            heads: heads as u32,
            head_dim: hd as u32,
            pos0: pos0 as u32,
            inverse,
            cos: &cb,
            sin: &sb,
        };
        submit(|e| {
            rope(false).record(g, e, &xb, &yb).unwrap();
            rope(true).record(g, e, &yb, &zb).unwrap();
        });
        let want = ops::rope(&x, seq, heads, hd, 10000.0, pos0, false);
        assert_close(
            &format!("rope {seq}x{heads}x{hd}+{pos0}"),
            &g.read_f32_blocking(&yb, x.len()).unwrap(),
            &want,
        );
        assert_close("rope inverse", &g.read_f32_blocking(&zb, x.len()).unwrap(), &x);
    }
}

/// Queries and keys rotated in one dispatch equal two single rotations, bit for bit, in
/// both directions, over odd shapes and batches (head widths of 2 and 6 take the pair
/// dispatch's pair-at-a-time path, 8 and 16 its two-pairs-at-a-time one).
#[test]
fn rope_pair_equals_two_single_rotations() {
    let g = gpu();
    let mut rng = Rng::new(3);
    for &(batch, seq, heads, kv_heads, hd, pos0) in &[
        (1, 1, 1, 1, 2, 0),
        (2, 5, 4, 2, 8, 3),
        (3, 7, 3, 1, 6, 40),
        (1, 33, 8, 8, 16, 0),
    ] {
        let (cos, sin) = rope_tables(pos0 + seq, &rope_inv_freq(hd, 10000.0));
        let (cb, sb) = (g.upload("cos", &cos), g.upload("sin", &sin));
        let q = rng.vec_normal(batch * seq * heads * hd, 1.0);
        let k = rng.vec_normal(batch * seq * kv_heads * hd, 1.0);
        let (qb, kb) = (g.upload("q", &q), g.upload("k", &k));
        for inverse in [false, true] {
            let rope = |heads: usize| Rope {
                batch: batch as u32,
                seq: seq as u32,
                heads: heads as u32,
                head_dim: hd as u32,
                pos0: pos0 as u32,
                inverse,
                cos: &cb,
                sin: &sb,
            };
            let out = |n: usize| g.storage("out", (n * 4) as u64);
            let (q1, k1, q2, k2) = (out(q.len()), out(k.len()), out(q.len()), out(k.len()));
            submit(|e| {
                rope(heads).record(g, e, &qb, &q1).unwrap();
                rope(kv_heads).record(g, e, &kb, &k1).unwrap();
                rope(heads)
                    .record_pair(g, e, (&qb, &q2), kv_heads as u32, (&kb, &k2))
                    .unwrap();
            });
            let bits = |b: &wgpu::Buffer, n: usize| -> Vec<u32> {
                g.read_f32_blocking(b, n)
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            };
            let what = format!("rope pair {batch}x{seq} heads {heads}/{kv_heads} hd {hd} inverse {inverse}");
            assert_eq!(bits(&q1, q.len()), bits(&q2, q.len()), "{what}: queries");
            assert_eq!(bits(&k1, k.len()), bits(&k2, k.len()), "{what}: keys");
        }
    }
}

/// This adapter's device with the attention kernel picked by hand: a workgroup per row
/// (GPUs), a row per invocation (CPU adapters), or a row per invocation reading its keys a
/// subgroup at a time (CPU adapters with subgroups; without them this runs the rows).
fn attention_device(rows: bool, lanes: bool) -> Gpu {
    gpu_with(|t| {
        t.attention_rows = rows;
        t.attention_lanes = lanes;
    })
}

fn subgroup_lanes_note(g: &Gpu) {
    if g.subgroup_min_size() < 8 {
        println!(
            "this adapter has no subgroups of 8 lanes (min size {}): attention_lanes.wgsl not run here",
            g.subgroup_min_size()
        );
    }
}

#[test]
fn attention_matches_oracle() {
    let lanes = attention_device(true, true);
    subgroup_lanes_note(&lanes);
    for g in [
        &attention_device(false, false),
        &attention_device(true, false),
        &lanes,
    ] {
        attention_cases(g);
    }
}

const ATTENTION_SHAPES: &[(usize, usize, usize, usize, usize)] = &[
    (1, 1, 1, 1, 1),
    (2, 5, 4, 2, 6),
    (1, 70, 2, 2, 16),
    (3, 9, 6, 1, 10),
    (1, 130, 4, 4, 8),
    (2, 33, 3, 3, 128),
    (1, 300, 4, 2, 40),
];

/// Attention over `batch` sequences of shape `a`, on buffers q, k, v, out, lse.
fn attention<'a>(
    batch: usize,
    a: AttentionDims,
    [q, k, v, out, lse]: [&'a wgpu::Buffer; 5],
) -> Attention<'a> {
    Attention {
        batch: batch as u32,
        seq: a.seq as u32,
        heads: a.heads as u32,
        kv_heads: a.kv_heads as u32,
        head_dim: a.head_dim as u32,
        q,
        k,
        v,
        out,
        lse,
        kv_f16: false,
    }
}

/// Attention's forward and backward on `g` for random inputs: (inputs q, k, v, d_out;
/// outputs out, lse, dq, dk, dv).
fn attention_run(g: &Gpu, rng: &mut Rng, batch: usize, a: AttentionDims) -> ([Vec<f32>; 4], [Vec<f32>; 5]) {
    let (seq, heads, hd) = (a.seq, a.heads, a.head_dim);
    let (qn, kvn) = (seq * heads * hd, seq * a.kv_heads * hd);
    let q = rng.vec_normal(batch * qn, 1.0);
    let k = rng.vec_normal(batch * kvn, 1.0);
    let v = rng.vec_normal(batch * kvn, 1.0);
    let d_out = rng.vec_normal(batch * qn, 1.0);
    let (qb, kb, vb, db) = (
        g.upload("q", &q),
        g.upload("k", &k),
        g.upload("v", &v),
        g.upload("do", &d_out),
    );
    let (ob, lb) = (
        g.storage("o", (batch * qn * 4) as u64),
        g.storage("lse", (batch * seq * heads * 4) as u64),
    );
    let (dqb, dkb, dvb) = (
        g.storage("dq", (batch * qn * 4) as u64),
        g.storage("dk", (batch * kvn * 4) as u64),
        g.storage("dv", (batch * kvn * 4) as u64),
    );
    let att = attention(batch, a, [&qb, &kb, &vb, &ob, &lb]);
    let mut e = g.device.create_command_encoder(&Default::default());
    att.record_forward(g, &mut e).unwrap();
    att.record_backward(g, &mut e, &db, &dqb, &dkb, &dvb).unwrap();
    g.queue.submit([e.finish()]);
    let outputs = [
        g.read_f32_blocking(&ob, batch * qn).unwrap(),
        g.read_f32_blocking(&lb, batch * seq * heads).unwrap(),
        g.read_f32_blocking(&dqb, batch * qn).unwrap(),
        g.read_f32_blocking(&dkb, batch * kvn).unwrap(),
        g.read_f32_blocking(&dvb, batch * kvn).unwrap(),
    ];
    ([q, k, v, d_out], outputs)
}

fn attention_cases(g: &Gpu) {
    let mut rng = Rng::new(3);
    for &(batch, seq, heads, kv_heads, hd) in ATTENTION_SHAPES {
        let a = AttentionDims {
            seq,
            heads,
            kv_heads,
            head_dim: hd,
        };
        let (qn, kvn) = (seq * heads * hd, seq * kv_heads * hd);
        let ([q, k, v, d_out], [out, _, dq, dk, dv]) = attention_run(g, &mut rng, batch, a);
        for b in 0..batch {
            let (qs, ks) = (b * qn..(b + 1) * qn, b * kvn..(b + 1) * kvn);
            let what = format!("attention batch {b} of {a:?}, {:?}", g.tuning());
            let (want, _) = ops::attention(&q[qs.clone()], &k[ks.clone()], &v[ks.clone()], a);
            assert_close(&what, &out[qs.clone()], &want);
            let (wq, wk, wv) = ops::attention_backward(
                &q[qs.clone()],
                &k[ks.clone()],
                &v[ks.clone()],
                a,
                &d_out[qs.clone()],
            );
            assert_close(&format!("dq {what}"), &dq[qs.clone()], &wq);
            assert_close(&format!("dk {what}"), &dk[ks.clone()], &wk);
            assert_close(&format!("dv {what}"), &dv[ks], &wv);
        }
    }
}

/// The bits of `out` and `lse` of attention decoding 2 sequences of `a.seq` queries against
/// `kv_len` cached positions, keys and values given as f32 values or, with `kv_f16`, f16
/// pairs.
fn decode<T: bytemuck::Pod>(
    g: &Gpu,
    a: AttentionDims,
    kv_len: usize,
    q: &[f32],
    (k, v): (&[T], &[T]),
    kv_f16: bool,
) -> (Vec<u32>, Vec<u32>) {
    let (qb, kb, vb) = (g.upload("q", q), g.upload("k", k), g.upload("v", v));
    let ob = g.storage("o", (q.len() * 4) as u64);
    let lse_len = 2 * a.seq * a.heads;
    let lb = g.storage("lse", (lse_len * 4) as u64);
    let att = Attention {
        kv_f16,
        ..attention(2, a, [&qb, &kb, &vb, &ob, &lb])
    };
    let mut e = g.device.create_command_encoder(&Default::default());
    att.record_decode(g, &mut e, kv_len as u32).unwrap();
    g.queue.submit([e.finish()]);
    let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    (
        bits(g.read_f32_blocking(&ob, q.len()).unwrap()),
        bits(g.read_f32_blocking(&lb, lse_len).unwrap()),
    )
}

/// The two row variants give the same bits: forward, backward and a decoding forward over
/// a longer key/value cache, on odd sequence lengths and head widths (lanes past a sequence's
/// end, elements past a row's last multiple of 8).
#[test]
fn attention_lanes_equal_rows_bit_for_bit() {
    let (rows, lanes) = (attention_device(true, false), attention_device(true, true));
    subgroup_lanes_note(&lanes);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    let names = ["out", "lse", "dq", "dk", "dv"];
    for &(batch, seq, heads, kv_heads, hd) in ATTENTION_SHAPES
        .iter()
        .chain(&[(2, 48, 1, 1, 32), (1, 17, 8, 2, 12)])
    {
        let a = AttentionDims {
            seq,
            heads,
            kv_heads,
            head_dim: hd,
        };
        let (_, want) = attention_run(&rows, &mut Rng::new(seq as u64), batch, a);
        let (_, got) = attention_run(&lanes, &mut Rng::new(seq as u64), batch, a);
        for (name, (w, g)) in names.iter().zip(want.iter().zip(&got)) {
            assert_eq!(bits(w), bits(g), "{name} of {batch} x {a:?}");
        }
    }
    // Decoding: `seq` new queries against `kv_len` cached positions.
    let mut rng = Rng::new(9);
    for &(seq, kv_len, heads, kv_heads, hd) in &[
        (1, 1, 2, 1, 8),
        (1, 37, 4, 2, 20),
        (3, 40, 2, 2, 16),
        (9, 23, 1, 1, 5),
    ] {
        let q = rng.vec_normal(2 * seq * heads * hd, 1.0);
        let k = rng.vec_normal(2 * kv_len * kv_heads * hd, 1.0);
        let v = rng.vec_normal(2 * kv_len * kv_heads * hd, 1.0);
        let a = AttentionDims {
            seq,
            heads,
            kv_heads,
            head_dim: hd,
        };
        let run = |g: &Gpu| decode(g, a, kv_len, &q, (&k, &v), false).0;
        assert_eq!(
            run(&rows),
            run(&lanes),
            "decoding {seq} queries over {kv_len} positions, heads {heads}/{kv_heads}, hd {hd}"
        );
    }
}

/// f32 values as f16 pairs, two a word (element i in half i % 2 of word i / 2), rounded to
/// nearest even, and the f32 values those f16s hold.
fn f16_pairs(x: &[f32]) -> (Vec<u32>, Vec<f32>) {
    let h: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v)).collect();
    let words = h
        .chunks(2)
        .map(|p| p[0].to_bits() as u32 | (p.get(1).map_or(0, |v| v.to_bits()) as u32) << 16)
        .collect();
    (words, h.iter().map(|v| v.to_f32()).collect())
}

/// Keys and values read as f16 pairs (a KV cache of f16) give, in every kernel variant,
/// exactly what the f32 kernel gives for the same values widened to f32: the widening is
/// exact and the arithmetic is f32 either way. Forward over a whole sequence and decoding.
#[test]
fn attention_reads_f16_keys_and_values_exactly() {
    let devices = [
        attention_device(false, false),
        attention_device(true, false),
        attention_device(true, true),
    ];
    subgroup_lanes_note(&devices[2]);
    let mut rng = Rng::new(11);
    // (seq, kv_len, heads, kv_heads, head_dim): seq == kv_len is a whole forward.
    for &(seq, kv_len, heads, kv_heads, hd) in &[
        (5, 5, 2, 1, 8),
        (1, 37, 4, 2, 20),
        (3, 40, 2, 2, 6),
        (1, 1, 1, 1, 2),
        (9, 23, 3, 1, 32),
    ] {
        let q = rng.vec_normal(2 * seq * heads * hd, 1.0);
        let (k_words, k) = f16_pairs(&rng.vec_normal(2 * kv_len * kv_heads * hd, 1.0));
        let (v_words, v) = f16_pairs(&rng.vec_normal(2 * kv_len * kv_heads * hd, 1.0));
        let a = AttentionDims {
            seq,
            heads,
            kv_heads,
            head_dim: hd,
        };
        let run = |g: &Gpu, f16: bool| match f16 {
            true => decode(g, a, kv_len, &q, (&k_words, &v_words), true),
            false => decode(g, a, kv_len, &q, (&k, &v), false),
        };
        for g in &devices {
            assert_eq!(
                run(g, true),
                run(g, false),
                "{seq} queries over {kv_len} positions, heads {heads}/{kv_heads}, hd {hd}, {:?}",
                g.tuning()
            );
        }
    }
}

/// `record_pack_f16` writes each value as one of the two f16s nearest to it (WGSL's rule;
/// round to nearest even gives the nearer), from the given word on, and nothing else.
#[test]
fn pack_f16_rounds_to_a_neighbouring_f16() {
    let g = gpu();
    let mut rng = Rng::new(12);
    for &(len, offset) in &[(2usize, 0u32), (130, 3), (4096, 17)] {
        let mut x = rng.vec_normal(len, 10.0);
        x[0] = 1.0 + 1.0 / 4096.0; // halfway between two f16s
        let xb = g.upload("x", &x);
        let total = offset as usize + len / 2 + 2;
        let sentinel = vec![0xdead_beef_u32; total];
        let packed = g.upload("packed", &sentinel);
        let mut e = g.device.create_command_encoder(&Default::default());
        record_pack_f16(g, &mut e, &xb, &packed, offset, len as u32).unwrap();
        g.queue.submit([e.finish()]);
        let words = g.read_u32_blocking(&packed, total).unwrap();
        let o = offset as usize;
        assert!(words[..o]
            .iter()
            .chain(&words[o + len / 2..])
            .all(|&w| w == 0xdead_beef));
        for (i, &v) in x.iter().enumerate() {
            let got = (words[o + i / 2] >> (16 * (i % 2))) & 0xffff;
            let nearest = half::f16::from_f32(v);
            let (lo, hi) = if nearest.to_f32() <= v {
                (nearest, half::f16::from_bits(next_up(nearest.to_bits())))
            } else {
                (half::f16::from_bits(next_down(nearest.to_bits())), nearest)
            };
            let got = half::f16::from_bits(got as u16);
            assert!(
                got.to_bits() == lo.to_bits() || got.to_bits() == hi.to_bits(),
                "value {i} = {v}: packed {got} (bits {:#06x}), neighbours {lo} and {hi}",
                got.to_bits()
            );
        }
    }
    assert!(record_pack_f16(
        g,
        &mut g.device.create_command_encoder(&Default::default()),
        &g.upload("x", &[1.0f32; 3]),
        &g.storage("p", 16),
        0,
        3
    )
    .is_err());
}

/// The next f16 towards +infinity and towards -infinity, by bits (finite values).
fn next_up(bits: u16) -> u16 {
    match bits {
        0x8000 => 0x0001,
        b if b & 0x8000 != 0 => b - 1,
        b => b + 1,
    }
}

fn next_down(bits: u16) -> u16 {
    match bits {
        0x0000 => 0x8001,
        b if b & 0x8000 != 0 => b + 1,
        b => b - 1,
    }
}

#[test]
fn cross_entropy_matches_oracle() {
    // Every fourth target (and the last row's) ignored where the row count allows: those rows
    // must get zero loss and gradient, and the mean is over the others. Both kernels: 64
    // invocations a row (GPUs) and a row per invocation (CPU adapters), the same bits.
    let devices = [false, true].map(|rows| gpu_with(|t| t.cross_entropy_rows = rows));
    let mut rng = Rng::new(4);
    for &(rows, vocab, ignore) in &[
        (1, 1, false),
        (3, 11, false),
        (3, 11, true),
        (64, 259, true),
        (37, 300, false),
        (5, 5000, true),
        (2, 17_000, false),
    ] {
        let logits = rng.vec_normal(rows * vocab, 3.0);
        let targets: Vec<u32> = (0..rows)
            .map(|r| match ignore && (r % 4 == 1 || r == rows - 1) {
                true => IGNORE_TARGET,
                false => rng.below(vocab as u64) as u32,
            })
            .collect();
        let counted = targets.iter().filter(|&&t| t != IGNORE_TARGET).count();
        let (loss, grad) = ops::cross_entropy(&logits, &targets, vocab);
        let mut bits = Vec::new();
        for g in &devices {
            let (lb, tb) = (g.upload("logits", &logits), g.upload("targets", &targets));
            let (lossb, gb) = (
                g.storage("loss", (rows * 4) as u64),
                g.storage("grad", (rows * vocab * 4) as u64),
            );
            let mut e = g.device.create_command_encoder(&Default::default());
            CrossEntropy {
                rows: rows as u32,
                vocab: vocab as u32,
                scale: 1.0 / counted as f32,
                logits: &lb,
                targets: &tb,
                loss: &lossb,
                grad: &gb,
            }
            .record(g, &mut e)
            .unwrap();
            g.queue.submit([e.finish()]);
            let what = format!("cross-entropy {rows}x{vocab} ignore={ignore}, {:?}", g.tuning());
            let per_row = g.read_f32_blocking(&lossb, rows).unwrap();
            let got = g.read_f32_blocking(&gb, rows * vocab).unwrap();
            for (r, &t) in targets.iter().enumerate() {
                if t == IGNORE_TARGET {
                    assert_eq!(per_row[r], 0.0, "{what}: ignored row {r} has a loss");
                    assert!(got[r * vocab..(r + 1) * vocab].iter().all(|&x| x == 0.0));
                }
            }
            assert_close(
                &format!("mean loss, {what}"),
                &[per_row.iter().sum::<f32>() / counted as f32],
                &[loss],
            );
            assert_close(&what, &got, &grad);
            bits.push(
                per_row
                    .iter()
                    .chain(&got)
                    .map(|x| x.to_bits())
                    .collect::<Vec<u32>>(),
            );
        }
        assert!(
            bits[0] == bits[1],
            "cross-entropy {rows}x{vocab}: the two kernels differ"
        );
    }
}

#[test]
fn embedding_grad_matches_oracle() {
    let g = gpu();
    let mut rng = Rng::new(5);
    // Odd sizes: partial id blocks (32 a workgroup) and column blocks (64), ids repeated and
    // absent, one id past the vocabulary (skipped).
    for &(rows, vocab, dim) in &[(1, 1, 1), (3, 7, 5), (65, 256, 64), (130, 258, 65), (97, 33, 130)] {
        let mut ids: Vec<u32> = (0..rows).map(|_| rng.below(vocab as u64) as u32).collect();
        ids[rows / 2] = vocab as u32;
        let dy = rng.vec_normal(rows * dim, 1.0);
        let mut want = vec![0f32; vocab * dim];
        for (r, &id) in ids.iter().enumerate() {
            if (id as usize) < vocab {
                for c in 0..dim {
                    want[id as usize * dim + c] += dy[r * dim + c];
                }
            }
        }
        let (ib, db) = (g.upload("ids", &ids), g.upload("dy", &dy));
        let out = g.storage("grad", (vocab * dim * 4) as u64);
        // Every element is written: start from garbage.
        g.queue
            .write_buffer(&out, 0, bytemuck::cast_slice(&vec![7f32; vocab * dim]));
        submit(|e| {
            memlayers::kernels::embedding_grad::record_embedding_grad(
                g,
                e,
                &ib,
                &db,
                &out,
                (rows as u32, vocab as u32, dim as u32),
            )
            .unwrap()
        });
        // The same additions in the same order: equal bits.
        assert_eq!(
            g.read_f32_blocking(&out, vocab * dim).unwrap(),
            want,
            "embedding_grad {rows} rows, vocab {vocab}, dim {dim}"
        );
    }
}

#[test]
fn row_gate_matches_oracle() {
    use memlayers::kernels::row_gate;
    let g = gpu();
    let mut rng = Rng::new(9);
    for &(rows, cols) in &[(1, 1), (3, 7), (65, 64), (130, 33), (7, 1000)] {
        let logits = rng.vec_normal(rows, 2.0);
        let x = rng.vec_normal(rows * cols, 1.0);
        let dy = rng.vec_normal(rows * cols, 1.0);
        let y0 = rng.vec_normal(rows * cols, 1.0);
        let (gb, xb, dyb) = (g.upload("g", &logits), g.upload("x", &x), g.upload("dy", &dy));
        let (y, y_acc) = (g.storage("y", (rows * cols * 4) as u64), g.upload("y0", &y0));
        let (dx, dg) = (
            g.storage("dx", (rows * cols * 4) as u64),
            g.storage("dg", (rows * 4) as u64),
        );
        let shape = (rows as u32, cols as u32);
        submit(|e| {
            row_gate::record_forward(g, e, (&gb, &xb, &y), shape, false).unwrap();
            row_gate::record_forward(g, e, (&gb, &xb, &y_acc), shape, true).unwrap();
            row_gate::record_backward(g, e, (&gb, &xb, &dyb), (&dx, &dg), shape).unwrap();
        });
        let want = ops::row_gate(&logits, &x, cols);
        let what = |s: &str| format!("row gate {s} {rows}x{cols}");
        assert_close(
            &what("forward"),
            &g.read_f32_blocking(&y, rows * cols).unwrap(),
            &want,
        );
        let added: Vec<f32> = want.iter().zip(&y0).map(|(a, b)| a + b).collect();
        assert_close(
            &what("accumulate"),
            &g.read_f32_blocking(&y_acc, rows * cols).unwrap(),
            &added,
        );
        let (want_dx, want_dg) = ops::row_gate_backward(&logits, &x, &dy, cols);
        assert_close(
            &what("dx"),
            &g.read_f32_blocking(&dx, rows * cols).unwrap(),
            &want_dx,
        );
        assert_close(&what("dg"), &g.read_f32_blocking(&dg, rows).unwrap(), &want_dg);
    }
}

/// The SwiGLU backward, `dy = dh silu(g)` and `dg = dh y silu'(g)`, against the formula, and
/// its two paths (4 elements an invocation where the length is a multiple of 4, else 1)
/// against each other bit for bit: the first 4n elements of a length 4n + 1 run take the
/// scalar path over the same inputs.
#[test]
fn swilu_backward_matches_formula_on_both_paths() {
    use memlayers::kernels::swilu_backward::SwiluBackward;
    let g = gpu();
    let mut rng = Rng::new(12);
    for quads in [1usize, 3, 64, 1000] {
        let len = 4 * quads + 1;
        let (dh, y, gate) = (
            rng.vec_normal(len, 1.0),
            rng.vec_normal(len, 1.0),
            rng.vec_normal(len, 3.0),
        );
        let run = |n: usize| {
            let (dhb, yb, gb) = (
                g.upload("dh", &dh[..n]),
                g.upload("y", &y[..n]),
                g.upload("g", &gate[..n]),
            );
            let (dyb, dgb) = (g.storage("dy", (n * 4) as u64), g.storage("dg", (n * 4) as u64));
            submit(|e| {
                SwiluBackward {
                    len: n as u32,
                    dh: &dhb,
                    y: &yb,
                    g: &gb,
                    dy: &dyb,
                    dg: &dgb,
                }
                .record(g, e)
                .unwrap()
            });
            (
                g.read_f32_blocking(&dyb, n).unwrap(),
                g.read_f32_blocking(&dgb, n).unwrap(),
            )
        };
        let (dy4, dg4) = run(len - 1);
        let (dy1, dg1) = run(len);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(&dy4), bits(&dy1[..len - 1]), "dy, {len} elements");
        assert_eq!(bits(&dg4), bits(&dg1[..len - 1]), "dg, {len} elements");
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        let want_dy: Vec<f32> = (0..len).map(|i| dh[i] * gate[i] * sigmoid(gate[i])).collect();
        let want_dg: Vec<f32> = (0..len)
            .map(|i| {
                let s = sigmoid(gate[i]);
                dh[i] * y[i] * s * (1.0 + gate[i] * (1.0 - s))
            })
            .collect();
        assert_close(&format!("dy, {len} elements"), &dy1, &want_dy);
        assert_close(&format!("dg, {len} elements"), &dg1, &want_dg);
    }
}
