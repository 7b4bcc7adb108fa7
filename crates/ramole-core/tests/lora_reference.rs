//! The batched per-row LoRA path agrees with the plain reference on random batches: random adapter
//! ranks, adapters that do not target the layer, rows of every composition (Arrow included: per-token
//! routing with the reference's own dense prototypes; the gate, from each adapter's dense output) side
//! by side.

use burn::tensor::{Tensor, TensorData};
use proptest::prelude::*;
use ramole_core::backend::{Selected, device};
use ramole_core::lora::{
    ArrowParams, Composition, GateFactors, GateLayer, LoraFactors, LoraStack, MixPlan, RowLayout, RowMix, reference,
};

#[derive(Debug, Clone)]
struct Case {
    d_in: usize,
    d_out: usize,
    seq: usize,
    adapters: Vec<Option<LoraFactors>>,
    gate: GateFactors,
    rows: Vec<RowMix>,
    w: Vec<f32>,
    x: Vec<f32>,
}

fn values(n: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-1.0f32..1.0, n)
}

fn factors(d_in: usize, d_out: usize) -> impl Strategy<Value = Option<LoraFactors>> {
    (1usize..5, any::<bool>()).prop_flat_map(move |(rank, targets)| {
        (values(rank * d_in), values(d_out * rank)).prop_map(move |(mut a, mut b)| {
            // A dominant first component (σ₁ well above σ₂, as in PEFT's Arrow fixture), so that
            // Arrow's prototype is well defined whichever exact method computes it.
            a[..d_in].iter_mut().for_each(|x| *x *= 4.0);
            b.iter_mut().step_by(rank).for_each(|x| *x *= 4.0);
            // alpha fixed, so equal ranks mean equal scales (what fusion needs)
            targets.then(|| LoraFactors { a, b, rank, scale: 4.0 / rank as f32, proto: None }.with_prototype())
        })
    })
}

fn row(adapters: Vec<Option<LoraFactors>>) -> impl Strategy<Value = RowMix> {
    let n = adapters.len();
    (
        0usize..5,
        prop::collection::vec((0..n, -1.0f32..1.0), 0..4),
        0..n,
        1usize..4,
        prop::sample::select(vec![0.5f32, 1.0, 2.0]),
    )
        .prop_map(move |(kind, picks, anchor, top_k, temperature)| {
            let mut entries: Vec<(usize, f32)> = Vec::new();
            for (u, w) in picks {
                if !entries.iter().any(|e| e.0 == u) {
                    entries.push((u, w));
                }
            }
            match kind {
                0 => RowMix { composition: Composition::Single, entries: entries.into_iter().take(1).collect() },
                1 => RowMix { composition: Composition::Mixture, entries },
                3 => {
                    // Arrow routes over every adapter of the batch (its candidates), keeping top_k per token.
                    let entries = (0..n).map(|u| (u, 1.0)).collect();
                    RowMix { composition: Composition::Arrow(ArrowParams { top_k, temperature }), entries }
                }
                4 => {
                    // The gate weighs the row's retrieved adapters (at least one), whatever their weights.
                    let mut entries = entries;
                    if entries.is_empty() {
                        entries.push((anchor, 1.0));
                    }
                    RowMix { composition: Composition::Gate, entries }
                }
                _ => {
                    // fusion over adapters that target the layer with the anchor's rank (or none do)
                    let rank = adapters[anchor].as_ref().map(|f| f.rank);
                    let mut fused: Vec<(usize, f32)> = entries
                        .into_iter()
                        .filter(|&(u, _)| adapters[u].as_ref().map(|f| f.rank) == rank && rank.is_some())
                        .collect();
                    if fused.is_empty() {
                        fused.push((anchor, 0.7));
                    }
                    if rank.is_none() {
                        fused.truncate(1);
                    }
                    RowMix { composition: Composition::Fusion, entries: fused }
                }
            }
        })
}

fn gate(d_in: usize, d_out: usize) -> impl Strategy<Value = GateFactors> {
    (1usize..4).prop_flat_map(move |rank| {
        // Scaled up so that the softmax is far from uniform and a wrong score would show.
        (values(rank * d_in), values(d_out * rank)).prop_map(move |(a, b)| GateFactors {
            a: a.iter().map(|v| v * 3.0).collect(),
            b: b.iter().map(|v| v * 3.0).collect(),
            rank,
        })
    })
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..7, 1usize..7, 1usize..4, 1usize..6, 1usize..6).prop_flat_map(|(d_in, d_out, seq, n_adapters, n_rows)| {
        prop::collection::vec(factors(d_in, d_out), n_adapters).prop_flat_map(move |adapters| {
            (
                prop::collection::vec(row(adapters.clone()), n_rows),
                gate(d_in, d_out),
                values(d_out * d_in),
                values(n_rows * seq * d_in),
                Just(adapters),
            )
                .prop_map(move |(rows, gate, w, x, adapters)| Case {
                    d_in,
                    d_out,
                    seq,
                    adapters,
                    gate,
                    rows,
                    w,
                    x,
                })
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn batched_rows_match_reference(c in case()) {
        let dev = device();
        let refs: Vec<Option<&LoraFactors>> = c.adapters.iter().map(Option::as_ref).collect();
        let plan = MixPlan::new(c.rows.clone(), refs.len()).expect("valid plan");
        let n = c.rows.len();
        let x = Tensor::<Selected, 3>::from_data(TensorData::new(c.x.clone(), [n, c.seq, c.d_in]), &dev);
        let w_t = Tensor::<Selected, 2>::from_data(TensorData::new(c.w.clone(), [c.d_out, c.d_in]), &dev).transpose();
        let base = x.clone().matmul(w_t.unsqueeze::<3>());
        let stack = LoraStack::<Selected>::new(&refs, c.d_in, c.d_out, &dev).expect("stack");
        let gate = GateLayer::<Selected>::from_factors(&c.gate, c.d_in, c.d_out, &dev).expect("gate");
        for layout in [RowLayout::Gathered, RowLayout::Shared, RowLayout::Host] {
            let y = match &stack {
                Some(stack) => base.clone() + stack.rows_in(&plan, layout, Some(&gate)).expect("rows").forward(x.clone()),
                None => base.clone(),
            };
            let got: Vec<f32> = y.into_data().iter::<f32>().collect();
            for r in 0..n {
                let xr = &c.x[r * c.seq * c.d_in..(r + 1) * c.seq * c.d_in];
                let want = reference::row_forward_gated(&plan, r, &refs, Some(&c.gate), xr, &c.w, c.d_in, c.d_out)
                    .expect("reference");
                let gr = &got[r * c.seq * c.d_out..(r + 1) * c.seq * c.d_out];
                for (g, w) in gr.iter().zip(&want) {
                    prop_assert!((g - w).abs() <= 1e-4 + 1e-4 * w.abs(), "{layout:?} row {r}: {g} vs {w}");
                }
            }
        }
    }
}

#[test]
fn fusion_of_unequal_ranks_is_refused() {
    let dev = device();
    let a = LoraFactors { a: vec![0.1; 2 * 3], b: vec![0.1; 2 * 2], rank: 2, scale: 1.0, proto: None };
    let b = LoraFactors { a: vec![0.1; 3], b: vec![0.1; 2], rank: 1, scale: 1.0, proto: None };
    let stack = LoraStack::<Selected>::new(&[Some(&a), Some(&b)], 3, 2, &dev).expect("stack").expect("targets");
    let plan = MixPlan::new(vec![RowMix { composition: Composition::Fusion, entries: vec![(0, 0.5), (1, 0.5)] }], 2)
        .expect("plan");
    assert!(stack.rows(&plan).is_err());
}

#[test]
fn invalid_plans_are_refused() {
    let single_two = RowMix { composition: Composition::Single, entries: vec![(0, 1.0), (1, 1.0)] };
    assert!(MixPlan::new(vec![single_two], 2).is_err());
    let out_of_range = RowMix { composition: Composition::Mixture, entries: vec![(2, 1.0)] };
    assert!(MixPlan::new(vec![out_of_range], 2).is_err());
    let nan = RowMix { composition: Composition::Mixture, entries: vec![(0, f32::NAN)] };
    assert!(MixPlan::new(vec![nan], 2).is_err());
    let twice = RowMix { composition: Composition::Mixture, entries: vec![(0, 1.0), (0, 1.0)] };
    assert!(MixPlan::new(vec![twice], 2).is_err());
    let empty_fusion = RowMix { composition: Composition::Fusion, entries: vec![] };
    assert!(MixPlan::new(vec![empty_fusion], 2).is_err());
    let plan =
        MixPlan::new(vec![RowMix::base(), RowMix { composition: Composition::Mixture, entries: vec![(1, 0.5)] }], 2)
            .expect("valid");
    assert_eq!(plan.mapping_matrix(), vec![0.0, 0.0, 0.0, 0.5]);
}

#[test]
fn layout_follows_memory_traffic() {
    let mix = |k: usize, n: usize| {
        let rows = (0..n)
            .map(|r| RowMix {
                composition: Composition::Mixture,
                entries: (0..k).map(|j| ((r + j) % 16, 0.5)).collect(),
            })
            .collect();
        MixPlan::new(rows, 16).expect("plan")
    };
    // 16 rows, 16 distinct adapters: 16 slots for 16 adapters -> one pair per row.
    assert_eq!(RowLayout::choose(&mix(1, 16), 16), RowLayout::Gathered);
    // 16 rows mixing 3 of 16: 48 slots over 16 adapters -> share the stack.
    assert_eq!(RowLayout::choose(&mix(3, 16), 16), RowLayout::Shared);
    let fusion =
        MixPlan::new(vec![RowMix { composition: Composition::Fusion, entries: vec![(0, 1.0)] }; 4], 1).expect("plan");
    assert_eq!(RowLayout::choose(&fusion, 1), RowLayout::Gathered);
    // On the host CPU backends every plan takes the host kernel; elsewhere the memory traffic decides.
    let on_host = ramole_core::backend::runs_on_host::<Selected>();
    let host = |other| if on_host { RowLayout::Host } else { other };
    assert_eq!(RowLayout::for_backend::<Selected>(&mix(3, 16), 16), host(RowLayout::Shared));
    assert_eq!(RowLayout::for_backend::<Selected>(&fusion, 1), host(RowLayout::Gathered));
}

#[test]
fn prototype_from_factors_is_the_dense_top_singular_vector() {
    let (d_in, d_out, rank) = (7usize, 5usize, 3usize);
    let mut a: Vec<f32> = (0..rank * d_in).map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0).collect();
    let mut b: Vec<f32> = (0..d_out * rank).map(|i| ((i * 23 % 13) as f32 - 6.0) / 9.0).collect();
    a[..d_in].iter_mut().for_each(|x| *x *= 3.0);
    b.iter_mut().step_by(rank).for_each(|x| *x *= 3.0);
    let f = LoraFactors { a, b, rank, scale: 1.0, proto: None };
    let mut dense = vec![0f32; d_out * d_in];
    for o in 0..d_out {
        for j in 0..d_in {
            dense[o * d_in + j] = (0..rank).map(|k| f.b[o * rank + k] * f.a[k * d_in + j]).sum();
        }
    }
    let want = reference::dense_prototype(&dense, d_in, d_out);
    let got = f.prototype();
    let dot: f32 = got.iter().zip(&want).map(|(x, y)| x * y).sum();
    assert!((dot.abs() - 1.0).abs() < 1e-5, "same direction up to sign: |dot| = {}", dot.abs());
    assert!((got.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5, "unit norm");
    // A row of A that depends on the others, and a rank-1 delta: still the exact direction.
    let f1 = LoraFactors {
        a: vec![1.0, 2.0, 0.0, 2.0, 4.0, 0.0],
        b: vec![1.0, 0.0, 0.0, 0.0],
        rank: 2,
        scale: 1.0,
        proto: None,
    };
    let p = f1.prototype();
    let n = 5f32.sqrt();
    assert!((p[0].abs() - 1.0 / n).abs() < 1e-6 && (p[1].abs() - 2.0 / n).abs() < 1e-6 && p[2].abs() < 1e-6, "{p:?}");
}

/// A gate row needs adapters and the layer's gate (of the layer's shape); the gate weighs adapters
/// whatever their weights, and with one adapter it is that adapter at weight 1.
#[test]
fn gate_rows_need_adapters_and_a_fitting_gate() {
    let dev = device();
    let f = LoraFactors { a: vec![0.3, -0.2, 0.5], b: vec![0.4, -0.1], rank: 1, scale: 2.0, proto: None };
    let refs = [Some(&f)];
    assert!(MixPlan::new(vec![RowMix { composition: Composition::Gate, entries: vec![] }], 1).is_err());
    assert_eq!(Composition::Gate.name(), "gate");
    assert!(Composition::Gate.is_routed());
    let plan =
        MixPlan::new(vec![RowMix { composition: Composition::Gate, entries: vec![(0, 0.25)] }], 1).expect("plan");
    let stack = LoraStack::<Selected>::new(&refs, 3, 2, &dev).expect("stack").expect("targets");
    assert!(stack.rows(&plan).is_err(), "no gate for the layer");
    let wrong = GateFactors { a: vec![0.1; 4], b: vec![0.1; 4], rank: 2 };
    let wrong = GateLayer::<Selected>::from_factors(&wrong, 2, 2, &dev).expect("a 2×2 gate");
    assert!(stack.rows_gated(&plan, Some(&wrong)).is_err(), "a gate of another layer's shape");
    assert!(
        GateLayer::<Selected>::from_factors(&GateFactors { a: vec![0.1; 5], b: vec![], rank: 2 }, 3, 2, &dev).is_err()
    );
    let gate =
        GateLayer::<Selected>::from_factors(&GateFactors { a: vec![0.1; 3], b: vec![0.2; 2], rank: 1 }, 3, 2, &dev)
            .expect("gate");
    let x = Tensor::<Selected, 3>::from_data(TensorData::new(vec![1.0f32, 2.0, -1.0], [1, 1, 3]), &dev);
    let got: Vec<f32> =
        stack.rows_gated(&plan, Some(&gate)).expect("rows").forward(x).into_data().iter::<f32>().collect();
    // One adapter: α = 1, so the update is s·B·A·x = 2 · [0.4, -0.1] · (0.3 − 0.4 − 0.5) = 2 · [0.4, -0.1] · −0.6.
    let want = [2.0 * 0.4 * -0.6, 2.0 * -0.1 * -0.6];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{g} vs {w}");
    }
}
