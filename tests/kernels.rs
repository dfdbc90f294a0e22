//! Each kernel against the CPU oracle over many random shapes, odd sizes included.

mod common;
use common::{assert_close, assert_same_selection, gpu, gpu_with};
use memlayers::kernels::embedding_bag::{EmbeddingBag, ValueChunks};
use memlayers::kernels::linear::{choice, Batched, Gate, Linear, WeightFormat};
use memlayers::kernels::linear::{GemmKernel, GemmPrecision, GemmTile};
use memlayers::kernels::product_topk::{
    lanes_loop_iterations, loop_iterations, workgroup_for, ProductTopK, ProductTopKBackward, TopKKernel,
};
use memlayers::kernels::LOOP_BUDGET;
use memlayers::memory::{as_stored, record_lookup, LookupShape, ValueDtype, ValuePool};
use memlayers::reference::{self, LookupDims};
use memlayers::rng::Rng;
use memlayers::Gpu;
use std::sync::OnceLock;

/// The test adapter once per GEMM kernel it can run (the subgroup kernel where it has
/// subgroups of 8 or more lanes, and every candidate tile shape of the tiled kernel that its
/// tuning allows), each fixed by its tuning (no timed trial), so every variant runs on every
/// adapter.
/// A linear variant's kernel, as test messages name it.
fn variant_name(g: &Gpu) -> String {
    match g.tuning().gemm_narrow_rows {
        0 => choice::kernel(g).to_string(),
        rows => format!("{} (narrow up to {rows} rows)", choice::kernel(g)),
    }
}

fn linear_variants() -> &'static [Gpu] {
    static VARIANTS: OnceLock<Vec<Gpu>> = OnceLock::new();
    VARIANTS.get_or_init(|| {
        let mut candidates = choice::candidates(gpu());
        if gpu().adapter_info().is_some_and(|i| i.backend == wgpu::Backend::Gl) {
            // GL's llvmpipe compiles a tile shape in 20-80 s (holding the GL context, which
            // other threads give up on after 6 s): only the kernel this adapter runs here; the
            // Vulkan pass runs every shape, and naga's GLSL translation covers them all.
            eprintln!("GL back end: only the GEMM kernel this adapter uses runs here");
            candidates.retain(|k| *k == choice::kernel(gpu()) || *k == GemmKernel::Tiled(GemmTile::DEFAULT));
            candidates.truncate(1);
        }
        let left_out = GemmTile::CANDIDATES.len() + usize::from(gpu().has_subgroup_gemm()) - candidates.len();
        if left_out > 0 {
            eprintln!(
                "{left_out} GEMM tile shape(s) beyond this adapter's {} invocations are not run here (kernels::Tuning::gemm_max_invocations)",
                gpu().tuning().gemm_max_invocations
            );
        }
        // The narrow kernel for products of at most 4 rows, with the default tile for larger.
        let narrow = gpu().tuning().gemm_narrow_rows.max(4);
        let fixed = |gemm: GemmKernel, narrow_rows: u32| {
            gpu_with(|t| {
                t.gemm = gemm;
                t.gemm_trial = false;
                t.gemm_narrow_rows = narrow_rows;
            })
        };
        let narrow_gpu = fixed(GemmKernel::Tiled(GemmTile::DEFAULT), narrow);
        candidates
            .into_iter()
            .map(|kernel| fixed(kernel, 0))
            .chain([narrow_gpu])
            .collect()
    })
}

/// This adapter with split-K for parallelism the other way round (GPUs split weight
/// gradients' reductions, CPU adapters do not): both paths run on every adapter.
fn other_split_k_gpu() -> &'static Gpu {
    static OTHER: OnceLock<Gpu> = OnceLock::new();
    OTHER.get_or_init(|| gpu_with(|t| t.split_k = !t.split_k))
}

#[allow(clippy::too_many_arguments)]
fn run_linear(
    g: &Gpu,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    gate: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let (xb, wb, yb) = (
        g.upload("x", x),
        g.upload("w", w),
        g.storage("y", (m * n * 4) as u64),
    );
    let bb = b.map(|b| g.upload("b", b));
    let gb = gate.map(|v| g.upload("gate", v));
    let kept = g.storage("gate input", (m * n * 4) as u64);
    let mut enc = g.device.create_command_encoder(&Default::default());
    Linear {
        label: "linear",
        x: &xb,
        w: &wb,
        w_format: WeightFormat::F32,
        x_f16: false,
        y_f16: false,
        bias: bb.as_ref(),
        gate: gb.as_ref().map(|by| Gate {
            by_f16: false,
            by,
            keep_input: Some(&kept),
        }),
        y: &yb,
        m: m as u32,
        n: n as u32,
        k: k as u32,
        batched: None,
        accumulate: false,
    }
    .record(g, &mut enc)
    .unwrap();
    g.queue.submit([enc.finish()]);
    let kept = gate.map(|_| g.read_f32_blocking(&kept, m * n).unwrap());
    (g.read_f32_blocking(&yb, m * n).unwrap(), kept)
}

#[test]
fn linear_matches_oracle_over_shapes() {
    for g in linear_variants() {
        linear_shapes(g);
    }
}

fn linear_shapes(g: &Gpu) {
    let mut rng = Rng::new(1);
    for &(m, n, k) in &[
        (1, 1, 1),
        (1, 7, 3),
        (5, 64, 64),
        (63, 65, 17),
        (130, 33, 129),
        (200, 256, 96),
        (3, 1000, 50),
    ] {
        let x = rng.vec_symmetric(m * k, 1.0);
        let w = rng.vec_symmetric(n * k, 1.0);
        let b = rng.vec_symmetric(n, 1.0);
        let want = reference::linear(&x, &w, Some(&b), m, n, k);
        assert_close(
            &format!("linear {m}x{n}x{k}"),
            &run_linear(g, &x, &w, Some(&b), None, m, n, k).0,
            &want,
        );
        let want_nb = reference::linear(&x, &w, None, m, n, k);
        assert_close(
            &format!("linear (no bias) {m}x{n}x{k}"),
            &run_linear(g, &x, &w, None, None, m, n, k).0,
            &want_nb,
        );
        let gate = rng.vec_symmetric(m * n, 2.0);
        let want_g = reference::silu_gate(&gate, &want);
        let (gated, kept) = run_linear(g, &x, &w, Some(&b), Some(&gate), m, n, k);
        assert_close(&format!("linear+gate {m}x{n}x{k}"), &gated, &want_g);
        assert_close(
            &format!("linear+gate, kept input {m}x{n}x{k}"),
            &kept.unwrap(),
            &want,
        );
    }
}

/// `[rows, cols]` row-major into `[cols, rows]`.
fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols * rows)
        .map(|i| a[(i % rows) * cols + i / rows])
        .collect()
}

/// One product `y [m, n]` on `g` through `layout`, x uploaded as given, w a buffer stored as
/// `w_format` says; returns y.
fn run_product(
    g: &Gpu,
    x: &[f32],
    (w, w_format): (&wgpu::Buffer, WeightFormat),
    (m, n, k): (usize, usize, usize),
    layout: Batched,
) -> Vec<f32> {
    let (xb, yb) = (g.upload("x", x), g.storage("y", (m * n * 4) as u64));
    let mut enc = g.device.create_command_encoder(&Default::default());
    Linear {
        label: "linear",
        x: &xb,
        w,
        w_format,
        x_f16: false,
        y_f16: false,
        bias: None,
        gate: None,
        y: &yb,
        m: m as u32,
        n: n as u32,
        k: k as u32,
        batched: Some(layout),
        accumulate: false,
    }
    .record(g, &mut enc)
    .unwrap();
    g.queue.submit([enc.finish()]);
    g.read_f32_blocking(&yb, m * n).unwrap()
}

#[test]
fn linear_every_transpose_case_matches_oracle() {
    for g in linear_variants() {
        linear_transposes(g);
    }
}

fn linear_transposes(g: &Gpu) {
    // The backward's products: dX = dY W (w stored [k, n]) and dW = dY^T X (both transposed).
    let mut rng = Rng::new(23);
    for &(m, n, k) in &[(1, 1, 1), (7, 5, 3), (65, 70, 33), (130, 17, 200), (64, 36, 40)] {
        for (xt, wt) in [(false, false), (false, true), (true, false), (true, true)] {
            let x = rng.vec_symmetric(m * k, 1.0); // op(x) = [m, k]
            let w = rng.vec_symmetric(n * k, 1.0); // op(w) = [n, k]
            let want = reference::linear(&x, &w, None, m, n, k);
            let xs = if xt { transpose(&x, m, k) } else { x.clone() };
            let ws = if wt { transpose(&w, n, k) } else { w.clone() };
            let layout = Batched::dense(m as u32, n as u32, k as u32, xt, wt);
            let got = run_product(
                g,
                &xs,
                (&g.upload("w", &ws), WeightFormat::F32),
                (m, n, k),
                layout,
            );
            assert_close(
                &format!("linear {m}x{n}x{k} x_transposed={xt} w_transposed={wt}"),
                &got,
                &want,
            );
        }
    }
}

#[test]
fn linear_sixteen_byte_loads_at_the_edges_match_oracle() {
    // Operands contiguous along their rows (x_row = 1, as in dW = dY^T X) or along k with
    // 4-aligned strides take 16-byte loads in the tiled kernel; quads that cross the edge of
    // the operand (m, n or k not a multiple of 4) and misaligned offsets take the scalar path.
    let mut rng = Rng::new(37);
    // (m, n, k, row-contiguous storage, padded leading dimension, offset)
    for &(m, n, k, rows_contiguous, lead, offset) in &[
        (30, 18, 13, true, 32, 4),
        (9, 11, 13, false, 16, 0),
        (9, 11, 13, false, 16, 1),
        (66, 70, 21, true, 72, 0),
        (5, 7, 24, false, 24, 8),
    ] {
        let x = rng.vec_symmetric(m * k, 1.0);
        let w = rng.vec_symmetric(n * k, 1.0);
        let want = reference::linear(&x, &w, None, m, n, k);
        // x[r, c] stored at offset + r * lead + c (rows contiguous: [k, lead] with r the
        // column) and likewise w, the leading dimension padded with garbage.
        let store = |a: &[f32], rows: usize| -> (Vec<f32>, u32, u32) {
            let outer = if rows_contiguous { k } else { rows };
            let mut buf = vec![7.5f32; offset + outer * lead];
            for r in 0..rows {
                for c in 0..k {
                    let at = if rows_contiguous {
                        c * lead + r
                    } else {
                        r * lead + c
                    };
                    buf[offset + at] = a[r * k + c];
                }
            }
            let (row, kk) = if rows_contiguous {
                (1, lead as u32)
            } else {
                (lead as u32, 1)
            };
            (buf, row, kk)
        };
        let (xs, x_row, x_k) = store(&x, m);
        let (ws, w_row, w_k) = store(&w, n);
        for g in linear_variants() {
            let layout = Batched {
                batch: 1,
                x_offset: offset as u32,
                x_batch: 0,
                x_row,
                x_k,
                w_offset: offset as u32,
                w_batch: 0,
                w_row,
                w_k,
                y_offset: 0,
                y_batch: 0,
                y_row: n as u32,
            };
            let got = run_product(
                g,
                &xs,
                (&g.upload("w", &ws), WeightFormat::F32),
                (m, n, k),
                layout,
            );
            assert_close(
                &format!(
                    "{} {m}x{n}x{k} rows_contiguous={rows_contiguous} lead={lead} offset={offset}",
                    variant_name(g)
                ),
                &got,
                &want,
            );
        }
    }
}

#[test]
fn f16_weights_give_what_their_rounded_f32_values_give_bit_for_bit() {
    // Weights stored as f16 (two a word, `pack_f16`) are widened exactly and summed in the
    // same order: every kernel and tile shape gives the bits of the f32 product with the
    // rounded weights, plain, transposed (the weight read along its rows) and split over k.
    let mut rng = Rng::new(47);
    for g in linear_variants() {
        for &(m, n, k, wt) in &[
            (1, 1, 1, false),
            (33, 9, 13, false),
            (64, 70, 40, true),
            (5, 7, 3000, false),
        ] {
            let x = rng.vec_symmetric(m * k, 1.0);
            let w = rng.vec_symmetric(n * k, 1.0);
            let rounded: Vec<f32> = w.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
            let ws = if wt { transpose(&w, n, k) } else { w.clone() };
            let rs = if wt {
                transpose(&rounded, n, k)
            } else {
                rounded.clone()
            };
            let layout = Batched::dense(m as u32, n as u32, k as u32, false, wt);
            let run = |weights: &wgpu::Buffer, format: WeightFormat| {
                run_product(g, &x, (weights, format), (m, n, k), layout)
            };
            let half = run(
                &g.upload("w f16", &memlayers::kernels::linear::pack_f16(&ws)),
                WeightFormat::F16,
            );
            let exact = run(&g.upload("w rounded", &rs), WeightFormat::F32);
            assert!(
                half.iter().zip(&exact).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{} {m}x{n}x{k} wt={wt}: f16 weights differ from their rounded f32 values",
                variant_name(g)
            );
        }
    }
}

#[test]
fn q8_weights_give_what_their_unpacked_values_give_bit_for_bit() {
    // Weights stored as 8-bit integers with an f16 scale per 32 stored values (`pack_q8`)
    // are widened exactly (`unpack_q8`) and summed in the same order: every kernel and tile
    // shape gives the bits of the f32 product with the unpacked weights, for decode-sized and
    // prefill-sized products, rows that are whole groups (the 16-byte loads) or not, the
    // weight read along its rows, and k long enough to split; and the oracle's product of
    // the unpacked weights within float tolerance.
    use memlayers::kernels::linear::{pack_q8, unpack_q8};
    let mut rng = Rng::new(53);
    for g in linear_variants() {
        for &(m, n, k, wt) in &[
            (1, 1, 32, false),
            (1, 96, 64, false),
            (3, 70, 96, false),
            (4, 2, 48, false),
            (33, 9, 160, false),
            (64, 70, 64, true),
            (2, 7, 3008, false),
        ] {
            let x = rng.vec_symmetric(m * k, 1.0);
            // Groups of different magnitudes, so each scale matters.
            let w: Vec<f32> = (0..n * k)
                .map(|i| rng.symmetric(1.0) * (1 + (i / 32) % 5) as f32)
                .collect();
            let ws = if wt { transpose(&w, n, k) } else { w.clone() };
            let (words, scales_at) = pack_q8(&ws).unwrap();
            let unpacked = unpack_q8(&words, scales_at, ws.len());
            let layout = Batched::dense(m as u32, n as u32, k as u32, false, wt);
            let run = |weights: &wgpu::Buffer, format: WeightFormat| {
                run_product(g, &x, (weights, format), (m, n, k), layout)
            };
            let q8 = run(&g.upload("w q8", &words), WeightFormat::Q8 { scales_at });
            let exact = run(&g.upload("w unpacked", &unpacked), WeightFormat::F32);
            assert!(
                q8.iter().zip(&exact).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{} {m}x{n}x{k} wt={wt}: q8 weights differ from their unpacked values",
                variant_name(g)
            );
            let plain = if wt {
                transpose(&unpacked, k, n)
            } else {
                unpacked.clone()
            };
            assert_close(
                &format!("q8 {m}x{n}x{k} wt={wt}"),
                &q8,
                &reference::linear(&x, &plain, None, m, n, k),
            );
        }
    }
}

/// A product with every operand's format chosen: `x` (`[m, k]`, or `[k, m]` when
/// `x_transposed`), the gate's `by` and y's prior contents (added with `accumulate`) are f16
/// pairs where their flag says so, else f32; `w` `[n, k]` f32 with a bias. Returns y's words.
#[allow(clippy::too_many_arguments)]
fn run_formats(
    g: &Gpu,
    (x, x_transposed, x_f16): (&[f32], bool, bool),
    w: &[f32],
    gate: Option<(&[f32], bool)>,
    (y0, y_f16): (Option<&[f32]>, bool),
    (m, n, k): (usize, usize, usize),
) -> Vec<u32> {
    use memlayers::kernels::linear::pack_f16;
    let upload = |name: &str, v: &[f32], f16: bool| {
        if f16 {
            g.upload(name, &pack_f16(v))
        } else {
            g.upload(name, v)
        }
    };
    let xs = if x_transposed {
        transpose(x, m, k)
    } else {
        x.to_vec()
    };
    let (xb, wb, bb) = (
        upload("x", &xs, x_f16),
        g.upload("w", w),
        g.upload("b", &vec![0.25f32; n]),
    );
    let gb = gate.map(|(v, f16)| upload("gate", v, f16));
    let yb = match y0 {
        Some(v) => upload("y", v, y_f16),
        None => g.storage("y", (m * n * 4) as u64),
    };
    let mut enc = g.device.create_command_encoder(&Default::default());
    Linear {
        label: "linear",
        x: &xb,
        w: &wb,
        w_format: WeightFormat::F32,
        x_f16,
        y_f16,
        bias: gate.is_none().then_some(&bb),
        gate: gb.as_ref().map(|by| Gate {
            by,
            by_f16: gate.is_some_and(|(_, f16)| f16),
            keep_input: None,
        }),
        y: &yb,
        m: m as u32,
        n: n as u32,
        k: k as u32,
        batched: Some(Batched::dense(m as u32, n as u32, k as u32, x_transposed, false)),
        accumulate: y0.is_some(),
    }
    .record(g, &mut enc)
    .unwrap();
    g.queue.submit([enc.finish()]);
    let words = if y_f16 { (m * n).div_ceil(2) } else { m * n };
    g.read_u32_blocking(&yb, words).unwrap()
}

#[test]
fn f16_activations_give_what_their_rounded_f32_values_give() {
    // Inputs, gate multipliers and prior outputs stored as f16 (`pack_f16`) are widened
    // exactly: every kernel gives the bits of the same product over their rounded values in
    // f32. An f16 output is that f32 result rounded once, to one of its two nearest f16s
    // (WGSL's conversion rule), after the epilogue and the accumulation, on every kernel but
    // the narrow one (whose products of few rows then run on the adapter's other kernel),
    // split over k too.
    let round = |v: &[f32]| -> Vec<f32> { v.iter().map(|&a| half::f16::from_f32(a).to_f32()).collect() };
    let f32s = |words: &[u32]| -> Vec<f32> { words.iter().map(|&b| f32::from_bits(b)).collect() };
    let mut rng = Rng::new(53);
    for g in linear_variants().iter().chain([other_split_k_gpu()]) {
        for &(m, n, k, xt, with_gate, accumulate) in &[
            (1, 2, 1, false, false, false),
            (3, 10, 13, false, true, false),
            (33, 70, 40, true, false, true),
            (130, 66, 129, false, true, true),
            (5, 8, 3000, false, false, true),
        ] {
            let name = format!(
                "{} {m}x{n}x{k} xt={xt} gate={with_gate} accumulate={accumulate}",
                variant_name(g)
            );
            let x = rng.vec_symmetric(m * k, 1.0);
            let w = rng.vec_symmetric(n * k, 1.0);
            let by = rng.vec_symmetric(m * n, 2.0);
            let y0 = rng.vec_symmetric(m * n, 1.0);
            let (rx, rby, ry0) = (round(&x), round(&by), round(&y0));
            let prior = |f16: bool| accumulate.then_some(if f16 { &y0[..] } else { &ry0[..] });
            // x and the gate's multiplier as given (f16 when `f16_in`) or rounded (f32), y's
            // prior contents likewise.
            let run = |f16_in: bool, y_f16: bool| {
                let (xs, bys) = if f16_in { (&x, &by) } else { (&rx, &rby) };
                run_formats(
                    g,
                    (xs, xt, f16_in),
                    &w,
                    with_gate.then_some((&bys[..], f16_in)),
                    (prior(y_f16), y_f16),
                    (m, n, k),
                )
            };
            let exact = f32s(&run(false, false));
            // f16 x and gate, f32 y: the same bits.
            let f16_in = f32s(&run(true, false));
            assert!(
                f16_in.iter().zip(&exact).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}: f16 inputs differ from their rounded f32 values"
            );
            // Everything f16: the f32 result, rounded once.
            let words = run(true, true);
            let got = memlayers::kernels::linear::unpack_f16(&words, m * n);
            // f16's spacing in e's binade (2^-24 below the normals): h is one of the two f16s
            // around e exactly when it lies within one spacing of e.
            let spacing = |e: f32| {
                let a = e.abs();
                if a < 6.103_515_6e-5 {
                    2f32.powi(-24)
                } else {
                    2f32.powi(a.log2().floor() as i32 - 10)
                }
            };
            for (i, (&h, &e)) in got.iter().zip(&exact).enumerate() {
                assert!(
                    (h - e).abs() <= spacing(e),
                    "{name}: output {i} is {h}, not an f16 next to the f32 result {e}"
                );
            }
        }
    }
}

#[test]
fn f16_input_gemms_run_on_matrix_units_and_match_the_oracle_on_rounded_inputs() {
    // Under GemmPrecision::F16Inputs the linear layers run on the adapter's cooperative
    // matrices: the operands rounded to the matrices' input type, products summed in f32 in
    // the hardware's order. The oracle gets the same rounded operands, so the suite's one
    // tolerance holds. Without matrix units the setting must leave the exact path in place.
    let mut g = Gpu::new_blocking().unwrap();
    g.set_gemm_precision(GemmPrecision::F16Inputs);
    let Some(config) = g.matrix_config() else {
        eprintln!(
            "this adapter has no cooperative matrices: f16-input GEMMs run the exact f32 path here \
(the matrix-unit kernel is validated and translated by naga in kernels::tests; the GPU check runs it)"
        );
        assert_eq!(choice::kernel(&g), choice::kernel(gpu()));
        let mut rng = Rng::new(41);
        let (m, n, k) = (33, 17, 40);
        let (x, w) = (rng.vec_symmetric(m * k, 1.0), rng.vec_symmetric(n * k, 1.0));
        let (exact, _) = run_linear(gpu(), &x, &w, None, None, m, n, k);
        let (f16_inputs, _) = run_linear(&g, &x, &w, None, None, m, n, k);
        assert!(exact
            .iter()
            .zip(&f16_inputs)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        return;
    };
    assert_eq!(choice::kernel(&g), GemmKernel::Matrix(config));
    let round = |v: &[f32]| -> Vec<f32> {
        if config.f16_inputs {
            v.iter().map(|&a| half::f16::from_f32(a).to_f32()).collect()
        } else {
            v.to_vec()
        }
    };
    let mut rng = Rng::new(43);
    for &(m, n, k) in &[
        (1, 1, 1),
        (7, 5, 3),
        (63, 65, 17),
        (130, 33, 129),
        (200, 256, 96),
        (64, 64, 64),
    ] {
        let (x, w, b) = (
            rng.vec_symmetric(m * k, 1.0),
            rng.vec_symmetric(n * k, 1.0),
            rng.vec_symmetric(n, 1.0),
        );
        let want = reference::linear(&round(&x), &round(&w), Some(&b), m, n, k);
        let gate = rng.vec_symmetric(m * n, 2.0);
        let (plain, _) = run_linear(&g, &x, &w, Some(&b), None, m, n, k);
        assert_close(&format!("{config:?} {m}x{n}x{k}"), &plain, &want);
        let (gated, kept) = run_linear(&g, &x, &w, Some(&b), Some(&gate), m, n, k);
        assert_close(
            &format!("{config:?} gated {m}x{n}x{k}"),
            &gated,
            &reference::silu_gate(&gate, &want),
        );
        assert_close(&format!("{config:?} kept {m}x{n}x{k}"), &kept.unwrap(), &want);
        for (xt, wt) in [(false, true), (true, false), (true, true)] {
            let want = reference::linear(&round(&x), &round(&w), None, m, n, k);
            let xs = if xt { transpose(&x, m, k) } else { x.clone() };
            let ws = if wt { transpose(&w, n, k) } else { w.clone() };
            let layout = Batched::dense(m as u32, n as u32, k as u32, xt, wt);
            let got = run_product(
                &g,
                &xs,
                (&g.upload("w", &ws), WeightFormat::F32),
                (m, n, k),
                layout,
            );
            assert_close(&format!("{config:?} {m}x{n}x{k} xt={xt} wt={wt}"), &got, &want);
        }
    }
}

#[test]
fn a_device_with_the_trial_on_asks_it_once_and_runs_its_choice() {
    // The trial's path as GPUs take it (CPU adapters keep it off): candidates limited to the
    // smallest tile and the subgroup kernel, so that it compiles two kernels here.
    let g = gpu_with(|t| {
        t.gemm_trial = true;
        t.gemm_max_invocations = 16;
        t.gemm_narrow_rows = 0;
    });
    let chosen = choice::kernel(&g);
    assert!(choice::candidates(&g).contains(&chosen), "{chosen}");
    assert_eq!(choice::kernel(&g), chosen);
    let mut rng = Rng::new(53);
    let (m, n, k) = (37, 29, 41);
    let (x, w) = (rng.vec_symmetric(m * k, 1.0), rng.vec_symmetric(n * k, 1.0));
    let got = run_product(
        &g,
        &x,
        (&g.upload("w", &w), WeightFormat::F32),
        (m, n, k),
        Batched::dense(m as u32, n as u32, k as u32, false, false),
    );
    assert_close(
        &format!("{chosen} {m}x{n}x{k}"),
        &got,
        &reference::linear(&x, &w, None, m, n, k),
    );
}

#[test]
fn gemm_choice_is_timed_once_then_read_from_the_cache() {
    let g = gpu();
    let dir = std::env::temp_dir().join(format!("memlayers-gemm-choice-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("gemm-kernels.json");
    let candidates = choice::candidates(g);
    let timed = choice::choose(g, Some(&path)).unwrap();
    assert!(candidates.contains(&timed), "{timed} is no candidate");
    let text = std::fs::read_to_string(&path).unwrap();
    let entries: std::collections::HashMap<String, String> = serde_json::from_str(&text).unwrap();
    assert_eq!(entries.len(), 1, "{text}");
    let (key, value) = entries.iter().next().unwrap();
    assert_eq!(value, &timed.to_string());
    // A cached choice is taken as it stands (no trial could pick each candidate in turn)...
    for want in &candidates {
        let one = std::collections::HashMap::from([(key.clone(), want.to_string())]);
        std::fs::write(&path, serde_json::to_string(&one).unwrap()).unwrap();
        assert_eq!(&choice::choose(g, Some(&path)).unwrap(), want);
    }
    // ... and one this build does not know is timed again and replaced.
    let stale = std::collections::HashMap::from([(key.clone(), "tiled 24x8x8".to_string())]);
    std::fs::write(&path, serde_json::to_string(&stale).unwrap()).unwrap();
    let again = choice::choose(g, Some(&path)).unwrap();
    assert!(candidates.contains(&again));
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains(&again.to_string()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn linear_split_k_matches_oracle() {
    for g in linear_variants().iter().chain([other_split_k_gpu()]) {
        linear_split_k(g);
    }
}

fn linear_split_k(g: &Gpu) {
    // Few output tiles over a long reduction split k into ranges (partial products summed in
    // order); reductions beyond one dispatch's loop budget (30,000) must split too. With
    // accumulate, the sum is added to what y holds.
    let mut rng = Rng::new(29);
    for &(m, n, k, xt, wt, accumulate) in &[
        (3, 5, 1000, true, true, false),
        (32, 32, 1536, true, true, true),
        (70, 9, 30_000, false, false, true),
        (1, 1, 513, false, true, false),
    ] {
        let x = rng.vec_symmetric(m * k, 1.0);
        let w = rng.vec_symmetric(n * k, 1.0);
        let y0 = rng.vec_symmetric(m * n, 1.0);
        let mut want = reference::linear(&x, &w, None, m, n, k);
        if accumulate {
            want.iter_mut().zip(&y0).for_each(|(a, b)| *a += b);
        }
        let xs = if xt { transpose(&x, m, k) } else { x.clone() };
        let ws = if wt { transpose(&w, n, k) } else { w.clone() };
        let (xb, wb, yb) = (g.upload("x", &xs), g.upload("w", &ws), g.upload("y", &y0));
        let mut enc = g.device.create_command_encoder(&Default::default());
        memlayers::kernels::linear::gemm(
            g,
            &mut enc,
            "linear",
            (&xb, xt),
            (&wb, wt),
            &yb,
            (m as u32, n as u32, k as u32),
            accumulate,
        )
        .unwrap();
        g.queue.submit([enc.finish()]);
        let got = g.read_f32_blocking(&yb, m * n).unwrap();
        assert_close(
            &format!("split-k linear {m}x{n}x{k} accumulate={accumulate}"),
            &got,
            &want,
        );
    }
}

#[test]
fn linear_variants_agree_bit_for_bit() {
    // Every kernel and tile shape sums each output in the same order with fma, so they must
    // agree exactly, over plain, gated, accumulating, transposed, batched and split-k
    // products (the batched case is the sub-key scoring's layout: strided query slices).
    let variants = linear_variants();
    if gpu().subgroup_min_size() < 8 {
        eprintln!("this adapter has no subgroups of 8 or more lanes: the subgroup kernel does not run here");
    }
    let gl = gpu()
        .adapter_info()
        .is_some_and(|i| i.backend == wgpu::Backend::Gl);
    assert!(gl || variants.len() >= GemmTile::CANDIDATES.len() - 1);
    let (a, others) = variants.split_first().unwrap();
    let mut rng = Rng::new(31);
    for &(m, n, k, xt, wt, batch) in &[
        (1, 1, 1, false, false, 1),
        (1, 300, 64, false, false, 1),
        (4, 70, 37, false, true, 1),
        (3, 9, 13, true, false, 1),
        (33, 9, 13, false, false, 1),
        (100, 70, 129, false, true, 1),
        (64, 64, 64, true, false, 1),
        (31, 200, 7, true, true, 1),
        (3, 5, 1000, true, true, 1),
        (45, 16, 24, false, false, 6),
    ] {
        let x = rng.vec_symmetric(batch * m * k, 1.0);
        let w = rng.vec_symmetric(batch * n * k, 1.0);
        let bias = rng.vec_symmetric(n, 1.0);
        let gate = rng.vec_symmetric(m * n, 1.0);
        let y0 = rng.vec_symmetric(batch * m * n, 1.0);
        let mut layout = Batched::dense(m as u32, n as u32, k as u32, xt, wt);
        layout.batch = batch as u32;
        layout.x_batch = (m * k) as u32;
        layout.w_batch = (n * k) as u32;
        layout.y_batch = (m * n) as u32;
        let run = |g: &Gpu, with_bias: bool, with_gate: bool, accumulate: bool| {
            let (xb, wb, yb) = (g.upload("x", &x), g.upload("w", &w), g.upload("y", &y0));
            let (bb, gb) = (g.upload("b", &bias), g.upload("gate", &gate));
            let mut enc = g.device.create_command_encoder(&Default::default());
            Linear {
                label: "linear",
                x: &xb,
                w: &wb,
                w_format: WeightFormat::F32,
                x_f16: false,
                y_f16: false,
                bias: with_bias.then_some(&bb),
                gate: with_gate.then_some(Gate {
                    by_f16: false,
                    by: &gb,
                    keep_input: None,
                }),
                y: &yb,
                m: m as u32,
                n: n as u32,
                k: k as u32,
                batched: (batch > 1 || xt || wt).then_some(layout),
                accumulate,
            }
            .record(g, &mut enc)
            .unwrap();
            g.queue.submit([enc.finish()]);
            g.read_f32_blocking(&yb, batch * m * n).unwrap()
        };
        let plain = batch == 1 && !xt && !wt;
        for (with_bias, with_gate, accumulate) in
            [(false, false, false), (plain, plain, false), (false, false, true)]
        {
            let ya = run(a, with_bias, with_gate, accumulate);
            for b in others {
                let yb = run(b, with_bias, with_gate, accumulate);
                let differ = ya
                    .iter()
                    .zip(&yb)
                    .filter(|(p, q)| p.to_bits() != q.to_bits())
                    .count();
                assert_eq!(
                    differ, 0,
                    "{m}x{n}x{k} xt={xt} wt={wt} batch={batch} bias={with_bias} gate={with_gate} accumulate={accumulate}: \
{differ} outputs differ between {} and {}",
                    variant_name(a),
                    variant_name(b)
                );
            }
        }
    }
}

fn run_lookup(query: &[f32], keys: &[f32], d: LookupDims) -> reference::LookupOut {
    let g = gpu();
    let n = d.rows * d.heads * d.knn;
    let (qb, kb) = (g.upload("query", query), g.upload("keys", keys));
    let shape = LookupShape {
        rows: d.rows as u32,
        heads: d.heads as u32,
        n_keys: d.n_keys as u32,
        k_dim: d.k_dim as u32,
        knn: d.knn as u32,
        qk_norm: d.qk_norm,
    };
    let mut enc = g.device.create_command_encoder(&Default::default());
    let out = record_lookup(g, &mut enc, shape, &qb, &kb).unwrap();
    g.queue.submit([enc.finish()]);
    reference::LookupOut {
        indices: g.read_u32_blocking(&out.indices, n).unwrap(),
        scores: g.read_f32_blocking(&out.scores, n).unwrap(),
        weights: g.read_f32_blocking(&out.weights, n).unwrap(),
    }
}

fn check_lookup(d: LookupDims, seed: u64) {
    let mut rng = Rng::new(seed);
    let query = rng.vec_symmetric(d.rows * d.heads * d.k_dim, 1.0);
    let keys = rng.vec_symmetric(2 * d.heads * d.n_keys * (d.k_dim / 2), 1.0);
    let want = reference::lookup(&query, &keys, d);
    let got = run_lookup(&query, &keys, d);
    assert_same_selection(&got, &want, &query, &keys, d);
    assert_close(&format!("scores {d:?}"), &got.scores, &want.scores);
    assert_close(&format!("weights {d:?}"), &got.weights, &want.weights);
}

#[test]
fn lookup_matches_oracle_over_shapes() {
    let shapes = [
        // (rows, heads, n_keys, k_dim, knn)
        (1, 1, 1, 2, 1),
        (3, 1, 50, 6, 1),
        (7, 2, 50, 10, 8),
        (5, 4, 64, 16, 32),
        (4, 8, 100, 14, 64),
        (2, 3, 333, 22, 17),
        (3, 4, 1024, 64, 32),
        (2, 2, 1500, 18, 64),
        (2, 1, 200, 8, 128),
        (1, 2, 1024, 1024, 16),
        (70, 2, 3000, 12, 20),
        (1100, 4, 1024, 8, 8), // 35 MiB of sub-key scores: two row blocks
        (2, 1, 20000, 8, 32),  // long halves: the top-k widens its workgroup for the loop budget
    ];
    for (i, &(rows, heads, n_keys, k_dim, knn)) in shapes.iter().enumerate() {
        for qk_norm in [false, true] {
            check_lookup(
                LookupDims {
                    rows,
                    heads,
                    n_keys,
                    k_dim,
                    knn,
                    qk_norm,
                },
                100 + i as u64,
            );
        }
    }
}

#[test]
fn lookup_breaks_ties_to_the_lower_slot() {
    // All-equal keys: every score ties, so the top-k must be slots 0, 1, 2, ... in order.
    let d = LookupDims {
        rows: 2,
        heads: 2,
        n_keys: 37,
        k_dim: 4,
        knn: 9,
        qk_norm: false,
    };
    let query = vec![0.5f32; d.rows * d.heads * d.k_dim];
    let keys = vec![0.25f32; 2 * d.heads * d.n_keys * 2];
    let got = run_lookup(&query, &keys, d);
    let want = reference::lookup(&query, &keys, d);
    assert_eq!(got.indices, want.indices);
    assert_eq!(&got.indices[..9], &[0, 1, 2, 3, 4, 5, 6, 7, 8]);
}

fn run_bag(
    indices: &[u32],
    weights: &[f32],
    pool: &ValuePool,
    (rows, bag): (usize, usize),
    (wg, columns): (Option<u32>, Option<u32>),
) -> Vec<f32> {
    let g = gpu();
    let (ib, wb) = (g.upload("idx", indices), g.upload("w", weights));
    let out = g.storage("out", (rows * pool.v_dim() * 4) as u64);
    let chunks: ValueChunks = pool.chunks();
    let mut enc = g.device.create_command_encoder(&Default::default());
    EmbeddingBag {
        rows: rows as u32,
        bag: bag as u32,
        indices: &ib,
        weights: &wb,
        values: &chunks,
        out: &out,
        workgroup_size: wg,
        columns_per_invocation: columns,
    }
    .record(g, &mut enc)
    .unwrap();
    g.queue.submit([enc.finish()]);
    g.read_f32_blocking(&out, rows * pool.v_dim()).unwrap()
}

/// The bag's weight gradient, `<dy[r], V[slot]>` per entry, against the oracle for f32 and
/// f16 tables split over buffers, and its 16-byte path (f32 rows of whole 16-byte words)
/// against the 4-byte one bit for bit: the same table and dy with one more column of zeros
/// (which adds nothing to the dot products) take the 4-byte path.
#[test]
fn bag_weight_gradients_match_oracle_and_their_two_paths_agree() {
    use memlayers::kernels::embedding_bag::WeightGrads;
    let g = gpu();
    let mut rng = Rng::new(8);
    // (rows, bag, table rows, v_dim, rows per chunk)
    for &(rows, bag, n, v_dim, per_chunk) in &[
        (3, 5, 10, 8, 10),
        (70, 32, 500, 32, 500),
        (5, 40, 97, 12, 7),
        (4, 9, 30, 7, 30),
    ] {
        let values = rng.vec_normal(n * v_dim, 1.0);
        let dy = rng.vec_normal(rows * v_dim, 1.0);
        let indices: Vec<u32> = (0..rows * bag).map(|_| rng.below(n as u64) as u32).collect();
        let run = |values: &[f32], dy: &[f32], v_dim: usize, dtype: ValueDtype| {
            let pool = ValuePool::with_rows_per_chunk(g, values, n, v_dim, dtype, per_chunk).unwrap();
            let chunks = pool.chunks();
            let (ib, dyb) = (g.upload("idx", &indices), g.upload("dy", dy));
            let gw = g.storage("grad weights", (rows * bag * 4) as u64);
            let mut enc = g.device.create_command_encoder(&Default::default());
            WeightGrads {
                rows: rows as u32,
                bag: bag as u32,
                indices: &ib,
                values: &chunks,
                dy: &dyb,
                grad_weights: &gw,
                continues: false,
            }
            .record(g, &mut enc)
            .unwrap();
            g.queue.submit([enc.finish()]);
            g.read_f32_blocking(&gw, rows * bag).unwrap()
        };
        for dtype in [ValueDtype::F32, ValueDtype::F16] {
            let stored = as_stored(&values, dtype);
            let want: Vec<f32> = (0..rows * bag)
                .map(|e| {
                    let (row, slot) = (e / bag, indices[e] as usize);
                    (0..v_dim)
                        .map(|c| dy[row * v_dim + c] * stored[slot * v_dim + c])
                        .sum()
                })
                .collect();
            let what = format!("bag weight gradients rows={rows} bag={bag} n={n} v_dim={v_dim} {dtype:?}");
            assert_close(&what, &run(&values, &dy, v_dim, dtype), &want);
        }
        let pad = |m: &[f32], rows: usize| -> Vec<f32> {
            (0..rows)
                .flat_map(|r| m[r * v_dim..(r + 1) * v_dim].iter().copied().chain([0.0]))
                .collect()
        };
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<u32>>();
        assert_eq!(
            bits(run(&values, &dy, v_dim, ValueDtype::F32)),
            bits(run(&pad(&values, n), &pad(&dy, rows), v_dim + 1, ValueDtype::F32)),
            "bag weight gradients v_dim={v_dim}: the 16-byte and 4-byte paths"
        );
    }
}

#[test]
fn embedding_bag_matches_oracle_f32_f16_and_split_tables() {
    let mut rng = Rng::new(7);
    // (rows, bag, table rows, v_dim, rows per chunk)
    for &(rows, bag, n, v_dim, per_chunk) in &[
        (1, 1, 1, 1, 1),
        (3, 5, 10, 7, 10),
        (17, 32, 100, 33, 30),
        (9, 128, 400, 256, 100),
        (4, 1024, 50, 300, 13),
        (33, 12, 1000, 1025, 1000),
        (3, 7, 20, 2056, 20), // 514 (f32) / 257 (f16) 16-byte columns: several column blocks
        (2, 1024, 30, 4095, 30), // one-word path, 4095 columns of a 1024-entry bag
        (3, 7, 20, 2056, 20), // 514 / 257 16-byte columns: several passes of four per invocation
        (5, 40, 97, 9, 7),    // 14 buffers: four dispatches accumulating
        (6, 24, 90, 16, 10),  // 9 buffers, 16-byte loads
        (5, 40, 97, 64, 7),   // 14 buffers, rows of 16 16-byte words
        (70, 32, 500, 32, 500), // the demo's shape: more token rows than a workgroup
    ] {
        let values = rng.vec_normal(n * v_dim, 1.0);
        let indices: Vec<u32> = (0..rows * bag).map(|_| rng.below(n as u64) as u32).collect();
        let weights = rng.vec_symmetric(rows * bag, 1.0);
        for dtype in [ValueDtype::F32, ValueDtype::F16] {
            let pool = ValuePool::with_rows_per_chunk(gpu(), &values, n, v_dim, dtype, per_chunk).unwrap();
            let want =
                reference::embedding_bag(&indices, &weights, &as_stored(&values, dtype), rows, bag, v_dim);
            let mut first: Option<Vec<f32>> = None;
            // One row per invocation (WHOLE_ROW) where rows are at most 64 values.
            let whole_row = if v_dim <= 64 {
                vec![(1, 0), (64, 0)]
            } else {
                vec![]
            };
            // Then what this adapter picks by itself (its variant and workgroup size, which
            // for `main_vec4` shrinks to fit short rows).
            let variants = [1, 16, 64, 256]
                .into_iter()
                .flat_map(|wg| [(wg, 4), (wg, 1)])
                .chain(whole_row)
                .map(|(wg, columns)| (Some(wg), Some(columns)))
                .chain([(None, None)]);
            for (wg, columns) in variants {
                let got = run_bag(&indices, &weights, &pool, (rows, bag), (wg, columns));
                let what = format!(
                    "bag rows={rows} bag={bag} n={n} v_dim={v_dim} chunks={} {dtype:?} wg={wg:?} columns/invocation={columns:?}",
                    pool.buffer_count()
                );
                assert_close(&what, &got, &want);
                // Each output element is one fixed-order chain whatever the workgroup size and variant.
                if let Some(f) = &first {
                    assert!(
                        f.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{what}: not bit-identical"
                    );
                }
                first = Some(got);
            }
        }
    }
}

fn run_product_topk(
    scores: &[f32],
    rows: usize,
    heads: usize,
    n_keys: usize,
    knn: usize,
    kernel: TopKKernel,
) -> reference::LookupOut {
    let g = gpu();
    let n = rows * heads * knn;
    let sb = g.upload("scores", scores);
    let (ib, ob, wb) = (
        g.storage("i", n as u64 * 4),
        g.storage("s", n as u64 * 4),
        g.storage("w", n as u64 * 4),
    );
    let mut enc = g.device.create_command_encoder(&Default::default());
    ProductTopK {
        rows: rows as u32,
        row0: 0,
        heads: heads as u32,
        n_keys: n_keys as u32,
        knn: knn as u32,
        scores: &sb,
        indices: &ib,
        out_scores: &ob,
        weights: &wb,
        kernel,
    }
    .record(g, &mut enc)
    .unwrap();
    g.queue.submit([enc.finish()]);
    reference::LookupOut {
        indices: g.read_u32_blocking(&ib, n).unwrap(),
        scores: g.read_f32_blocking(&ob, n).unwrap(),
        weights: g.read_f32_blocking(&wb, n).unwrap(),
    }
}

#[test]
fn product_topk_is_exact_for_every_kernel_and_workgroup_size() {
    let mut rng = Rng::new(17);
    // (rows, heads, n_keys, knn, distinct score levels: 0 = continuous)
    for &(rows, heads, n_keys, knn, levels) in &[
        (3, 2, 50, 7, 0),
        (2, 3, 1024, 32, 0),
        (2, 2, 300, 128, 0),
        (1, 2, 20000, 32, 0), // long halves: wider workgroups keep the loops in budget
        (4, 1, 64, 16, 3),    // massive ties: index tie-break passes
        (5, 2, 64, 16, 0),    // the demo's shape (per invocation: the best 16 in registers)
        (3, 3, 37, 12, 0),
        (2, 2, 2000, 64, 7), // ties and a long half
        (1, 1, 1, 1, 0),
    ] {
        let scores: Vec<f32> = (0..rows * heads * 2 * n_keys)
            .map(|_| {
                let v = match levels {
                    0 => rng.symmetric(3.0),
                    l => (rng.below(l) as f32 - 1.0) * 0.5, // includes -0.5 and 0.0
                };
                // -0.0 and +0.0 compare equal: the kernel must treat them as a tie too.
                if v == 0.0 && rng.below(2) == 0 {
                    -0.0
                } else {
                    v
                }
            })
            .collect();
        let mut want = reference::LookupOut::default();
        for item in 0..rows * heads {
            let half = |p: usize| &scores[(item * 2 + p) * n_keys..(item * 2 + p + 1) * n_keys];
            let best = reference::product_top_k(half(0), half(1), n_keys, knn);
            let s: Vec<f32> = best.iter().map(|b| b.0).collect();
            want.weights.extend(reference::softmax(&s));
            want.scores.extend(&s);
            want.indices.extend(best.iter().map(|b| b.1));
        }
        let mut first: Option<reference::LookupOut> = None;
        let kernels = [1, 2, 8, 16, 64, 256]
            .map(TopKKernel::Workgroup)
            .into_iter()
            .chain([TopKKernel::PerInvocation]);
        for kernel in kernels {
            let iterations = match kernel {
                TopKKernel::Workgroup(wg) => loop_iterations(n_keys as u32, knn as u32, wg),
                _ => lanes_loop_iterations(n_keys as u32, knn as u32),
            };
            if iterations > LOOP_BUDGET {
                continue; // refused by the kernel (tested below)
            }
            let got = run_product_topk(&scores, rows, heads, n_keys, knn, kernel);
            let what =
                format!("rows={rows} heads={heads} n_keys={n_keys} knn={knn} levels={levels} {kernel:?}");
            assert_eq!(got.indices, want.indices, "slots: {what}");
            assert_close(&format!("scores {what}"), &got.scores, &want.scores);
            assert_close(&format!("weights {what}"), &got.weights, &want.weights);
            if let Some(f) = &first {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&f.weights),
                    bits(&got.weights),
                    "bit-identical across kernels and workgroup sizes: {what}"
                );
            }
            first = Some(got);
        }
    }
}

/// The product top-k's backward gives the same bits per workgroup (GPUs) and per invocation
/// (CPU adapters: registers for knn <= 16, private arrays above), on real top-k outputs
/// (entries sharing sub-keys) with rows past `row0`.
#[test]
fn product_topk_backward_is_the_same_in_every_kernel() {
    let devices = [true, false].map(|per| gpu_with(|t| t.topk_per_invocation = per));
    let mut rng = Rng::new(23);
    for &(rows, heads, n_keys, knn) in &[
        (6, 2, 64, 16),
        (3, 3, 37, 7),
        (4, 2, 300, 32),
        (2, 1, 5, 1),
        (5, 2, 13, 13),
    ] {
        let scores: Vec<f32> = (0..rows * heads * 2 * n_keys)
            .map(|_| rng.symmetric(3.0))
            .collect();
        let fwd = run_product_topk(&scores, rows, heads, n_keys, knn, TopKKernel::PerInvocation);
        let grad_weights = rng.vec_normal(fwd.weights.len(), 1.0);
        let row0 = 1;
        let run = |g: &Gpu| {
            let (ib, wb, gb) = (
                g.upload("indices", &fwd.indices),
                g.upload("weights", &fwd.weights),
                g.upload("grad weights", &grad_weights),
            );
            let n = (rows - row0) * heads * 2 * n_keys;
            let out = g.storage("grad scores", n as u64 * 4);
            let mut e = g.device.create_command_encoder(&Default::default());
            ProductTopKBackward {
                rows: (rows - row0) as u32,
                row0: row0 as u32,
                heads: heads as u32,
                n_keys: n_keys as u32,
                knn: knn as u32,
                indices: &ib,
                weights: &wb,
                grad_weights: &gb,
                grad_scores: &out,
            }
            .record(g, &mut e)
            .unwrap();
            g.queue.submit([e.finish()]);
            g.read_u32_blocking(&out, n).unwrap()
        };
        let per_invocation = run(&devices[0]);
        // (one entry: its softmax weight is 1 whatever its score, so its gradient is 0)
        assert!(
            knn == 1 || per_invocation.iter().any(|&b| b != 0),
            "knn {knn}: all zero"
        );
        assert_eq!(
            per_invocation,
            run(&devices[1]),
            "rows {rows} heads {heads} n_keys {n_keys} knn {knn}"
        );
    }
}

#[test]
fn loop_budget_holds_for_every_supported_shape() {
    // CPU drivers stop loops after 65,535 iterations per invocation: the largest lookup must
    // still find a workgroup size within the budget, and an explicit size beyond it is refused.
    for preferred in [8, 16, 64] {
        let wg = workgroup_for(65535, 128, preferred).unwrap();
        assert!(loop_iterations(65535, 128, wg) <= LOOP_BUDGET);
    }
    assert!(loop_iterations(300, 128, 1) > LOOP_BUDGET);
    let g = gpu();
    let b = g.storage("b", 1 << 20);
    let mut enc = g.device.create_command_encoder(&Default::default());
    let refused = ProductTopK {
        rows: 1,
        row0: 0,
        heads: 1,
        n_keys: 300,
        knn: 128,
        scores: &b,
        indices: &b,
        out_scores: &b,
        weights: &b,
        kernel: TopKKernel::Workgroup(1),
    }
    .record(g, &mut enc);
    assert!(matches!(refused, Err(memlayers::Error::Config(m)) if m.contains("loop iterations")));
    // The per-invocation kernel: refused beyond its budget, and Auto then takes workgroups.
    assert!(lanes_loop_iterations(20000, 32) > LOOP_BUDGET);
    assert!(lanes_loop_iterations(1024, 128) <= LOOP_BUDGET);
    let refused = ProductTopK {
        rows: 1,
        row0: 0,
        heads: 1,
        n_keys: 20000,
        knn: 32,
        scores: &b,
        indices: &b,
        out_scores: &b,
        weights: &b,
        kernel: TopKKernel::PerInvocation,
    }
    .record(g, &mut enc);
    assert!(matches!(refused, Err(memlayers::Error::Config(m)) if m.contains("loop iterations")));
}

#[test]
fn radix_sort_is_stable_and_matches_std() {
    // Both variants: a workgroup per block of pairs (GPUs) and an invocation per block (CPU
    // adapters).
    for per_invocation in [false, true] {
        radix_sort_cases(&gpu_with(|t| t.sort_per_invocation = per_invocation));
    }
}

fn radix_sort_cases(g: &memlayers::Gpu) {
    let mut rng = Rng::new(61);
    for &(n, key_bits, distinct) in &[
        (1u32, 1u32, 1u64),
        (255, 8, 7),
        (257, 12, 4096),
        (1000, 20, 50),
        (70_000, 24, 3000),
        (3000, 32, u32::MAX as u64),
    ] {
        let keys: Vec<u32> = (0..n)
            .map(|_| (rng.below(distinct) as u32) & (((1u64 << key_bits) - 1) as u32))
            .collect();
        let values: Vec<u32> = (0..n).collect();
        let (kb, vb) = (g.upload("keys", &keys), g.upload("values", &values));
        let mut enc = g.device.create_command_encoder(&Default::default());
        let sorted = memlayers::kernels::radix_sort::record_sort(g, &mut enc, &kb, &vb, n, key_bits).unwrap();
        g.queue.submit([enc.finish()]);
        let mut want: Vec<(u32, u32)> = keys.iter().cloned().zip(values.iter().cloned()).collect();
        want.sort_by_key(|&(k, _)| k); // std's sort_by_key is stable
        let got_k = g.read_u32_blocking(&sorted.keys, n as usize).unwrap();
        let got_v = g.read_u32_blocking(&sorted.values, n as usize).unwrap();
        let got: Vec<(u32, u32)> = got_k.into_iter().zip(got_v).collect();
        assert_eq!(got, want, "n = {n}, key_bits = {key_bits}, {:?}", g.tuning());
    }
}

#[test]
fn fma_peak_computes_its_recurrence() {
    // The benchmark's arithmetic yardstick: each invocation's 8 vec4 chains a -> 0.999 a + c,
    // summed. The oracle applies the same recurrence with mul_add; drivers that do not fuse
    // (lavapipe: a multiply, then an add) round differently, within the shared tolerance.
    let g = gpu();
    let (workgroups, rounds) = (3u32, 100u32);
    let invocations = (workgroups * 64) as usize;
    let out = g.storage("fma_peak out", invocations as u64 * 4);
    let mut enc = g.device.create_command_encoder(&Default::default());
    let flops =
        memlayers::kernels::yardsticks::fma_peak::record(g, &mut enc, &out, workgroups, rounds).unwrap();
    g.queue.submit([enc.finish()]);
    let got = g.read_f32_blocking(&out, invocations).unwrap();
    assert_eq!(flops, invocations as f64 * rounds as f64 * 64.0);
    let c = [1e-3f32, 2e-3, 3e-3, 4e-3];
    let want: Vec<f32> = (0..invocations)
        .map(|i| {
            let s = i as f32 * 1e-6;
            let mut total = [0f32; 4];
            for chain in 0..8 {
                for (lane, t) in total.iter_mut().enumerate() {
                    let mut a = s + chain as f32;
                    for _ in 0..rounds {
                        a = a.mul_add(0.999, c[lane]);
                    }
                    *t += a;
                }
            }
            total[0] + total[1] + total[2] + total[3]
        })
        .collect();
    assert_close("fma_peak", &got, &want);
}
