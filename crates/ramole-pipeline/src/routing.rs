//! From an input's retrieved LoRAs to the adapters, weights and composition of its batch row.

use ramole_core::lora::{ArrowParams, Composition};
use ramole_mole::RowRequest;
use serde::{Deserialize, Serialize};

use crate::PipelineError;

/// How an input's retrieved LoRAs are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// The base model alone (no LoRA).
    Base,
    /// The top-1 retrieved LoRA alone.
    Selection,
    /// The top-k LoRAs' outputs, weighted: `y = Wx + Σ wᵢ sᵢ Bᵢ Aᵢ x`.
    Mixture,
    /// The top-k LoRAs' parameters, averaged with the weights: `y = Wx + s (Σ wᵢ Bᵢ)(Σ wᵢ Aᵢ) x`.
    Fusion,
    /// Arrow over the top-k LoRAs: per token and layer, the best [`ArrowParams::top_k`] of them by
    /// `|x · prototype|`, weighted by a softmax of those scores (training-free; the retrieval's
    /// weights play no part).
    Arrow,
    /// RouterLoRA over the top-k LoRAs: per token and layer, weights from the engine's trained gate
    /// (`softmax(⟨A_g x, B_gᵀ vᵢ⟩ / √r_g)`; the retrieval's weights play no part).
    Gate,
}

impl Strategy {
    /// Every strategy, in the order of the paper's tables.
    pub const ALL: [Self; 6] = [Self::Base, Self::Selection, Self::Mixture, Self::Fusion, Self::Arrow, Self::Gate];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Base => "base",
            Self::Selection => "selection",
            Self::Mixture => "mixture",
            Self::Fusion => "fusion",
            Self::Arrow => "arrow",
            Self::Gate => "gate",
        }
    }

    /// How many LoRAs the strategy takes from a top-`k` retrieval.
    pub fn loras_used(self, top_k: usize) -> usize {
        match self {
            Self::Base => 0,
            Self::Selection => 1,
            Self::Mixture | Self::Fusion | Self::Arrow | Self::Gate => top_k,
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Strategy {
    type Err = PipelineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|x| x.name() == s).ok_or_else(|| {
            PipelineError::Config(format!(
                "strategy `{s}`: expected one of base, selection, mixture, fusion, arrow, gate"
            ))
        })
    }
}

/// How the weights of a mixture or fusion are set from the retrieval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Weighting {
    /// `1/k` each, as LoraRetriever does.
    Uniform,
    /// `softmax(score / temperature)` over the retrieved LoRAs.
    Softmax {
        /// The softmax temperature (> 0).
        temperature: f32,
    },
}

/// How inputs are routed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RouteConfig {
    /// The strategy.
    pub strategy: Strategy,
    /// LoRAs retrieved per input (mixture and fusion use all of them; selection the first).
    pub top_k: usize,
    /// Weights of a mixture or fusion.
    pub weighting: Weighting,
    /// Arrow's per-token selection among the retrieved LoRAs ([`Strategy::Arrow`]).
    pub arrow: ArrowParams,
}

impl Default for RouteConfig {
    /// Mixture of the top 3 with uniform weights (LoraRetriever's default setting); Arrow keeps 2
    /// of the 3 per token at temperature 1.
    fn default() -> Self {
        Self {
            strategy: Strategy::Mixture,
            top_k: 3,
            weighting: Weighting::Uniform,
            arrow: ArrowParams { top_k: 2, temperature: 1.0 },
        }
    }
}

impl RouteConfig {
    /// Checks `top_k ≥ 1` and a finite positive temperature.
    pub fn validate(&self) -> Result<(), PipelineError> {
        if self.top_k == 0 {
            return Err(PipelineError::Config("top-k must be at least 1".into()));
        }
        if let Weighting::Softmax { temperature } = self.weighting
            && !(temperature.is_finite() && temperature > 0.0)
        {
            return Err(PipelineError::Config(format!("softmax temperature {temperature} must be finite and > 0")));
        }
        self.arrow.validate().map_err(PipelineError::Config)?;
        Ok(())
    }
}

/// One LoRA an input is routed to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutedLora {
    /// The pool entry's name.
    pub lora: String,
    /// Its cosine similarity to the input, when it was retrieved (`None` when given explicitly).
    pub score: Option<f32>,
    /// Its weight in the composition.
    pub weight: f32,
}

/// How one input is served: its LoRAs with scores and weights, and how they combine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Routing {
    /// The strategy that produced it.
    pub strategy: Strategy,
    /// The LoRAs used (empty for the base model). With Arrow and the gate their weights are 1: the
    /// real weights are chosen per token.
    pub loras: Vec<RoutedLora>,
    /// Arrow's settings, for [`Strategy::Arrow`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrow: Option<ArrowParams>,
}

impl Routing {
    /// The routing of `strategy` for retrieval hits `(name, cosine)` in decreasing order of score.
    pub fn from_hits(hits: &[(String, f32)], cfg: &RouteConfig) -> Self {
        let used = &hits[..cfg.strategy.loras_used(cfg.top_k).min(hits.len())];
        let weights: Vec<f32> = match (cfg.strategy, cfg.weighting) {
            (Strategy::Base, _) => Vec::new(),
            (Strategy::Selection | Strategy::Arrow | Strategy::Gate, _) => vec![1.0; used.len()],
            (_, Weighting::Uniform) => vec![1.0 / used.len().max(1) as f32; used.len()],
            (_, Weighting::Softmax { temperature }) => {
                let max = used.iter().map(|(_, s)| *s).fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = used.iter().map(|(_, s)| ((s - max) / temperature).exp()).collect();
                let sum: f32 = e.iter().sum();
                e.iter().map(|x| x / sum).collect()
            }
        };
        let loras = used
            .iter()
            .zip(weights)
            .map(|((name, score), weight)| RoutedLora { lora: name.clone(), score: Some(*score), weight })
            .collect();
        let arrow = (cfg.strategy == Strategy::Arrow).then_some(cfg.arrow);
        Self { strategy: cfg.strategy, loras, arrow }
    }

    /// The routing to one given LoRA with weight 1 (e.g. the task's own LoRA: perfect selection).
    pub fn single(lora: impl Into<String>) -> Self {
        Self {
            strategy: Strategy::Selection,
            loras: vec![RoutedLora { lora: lora.into(), score: None, weight: 1.0 }],
            arrow: None,
        }
    }

    /// Adapters and weights chosen by the client rather than retrieved (scores `None`), combined by
    /// `composition`: the strategy that [`Self::row_request`] turns back into that composition.
    pub fn explicit(adapters: Vec<(String, f32)>, composition: Composition) -> Self {
        let (strategy, arrow) = match composition {
            Composition::Single => (Strategy::Selection, None),
            Composition::Mixture => (Strategy::Mixture, None),
            Composition::Fusion => (Strategy::Fusion, None),
            Composition::Arrow(p) => (Strategy::Arrow, Some(p)),
            Composition::Gate => (Strategy::Gate, None),
        };
        let loras = adapters.into_iter().map(|(lora, weight)| RoutedLora { lora, score: None, weight }).collect();
        Self { strategy, loras, arrow }
    }

    /// The batch row this routing asks for.
    pub fn row_request(&self) -> RowRequest {
        let composition = match self.strategy {
            Strategy::Base | Strategy::Selection => Composition::Single,
            // One LoRA mixed or fused is that LoRA with its weight.
            _ if self.loras.len() <= 1 => Composition::Single,
            Strategy::Mixture => Composition::Mixture,
            Strategy::Fusion => Composition::Fusion,
            Strategy::Arrow => Composition::Arrow(self.arrow.unwrap_or_default()),
            Strategy::Gate => Composition::Gate,
        };
        RowRequest { adapters: self.loras.iter().map(|l| (l.lora.clone(), l.weight)).collect(), composition }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits() -> Vec<(String, f32)> {
        vec![("plural".into(), 0.9), ("past_tense".into(), 0.7), ("negation".into(), 0.5)]
    }

    #[test]
    fn strategies_pick_and_weigh_the_retrieved_loras() {
        let cfg = |strategy, weighting| RouteConfig { strategy, top_k: 3, weighting, ..RouteConfig::default() };
        let base = Routing::from_hits(&hits(), &cfg(Strategy::Base, Weighting::Uniform));
        assert!(base.loras.is_empty());
        assert_eq!(base.row_request(), RowRequest::default());

        let sel = Routing::from_hits(&hits(), &cfg(Strategy::Selection, Weighting::Uniform));
        assert_eq!(sel.loras, vec![RoutedLora { lora: "plural".into(), score: Some(0.9), weight: 1.0 }]);
        assert_eq!(sel.row_request().composition, Composition::Single);

        let mix = Routing::from_hits(&hits(), &cfg(Strategy::Mixture, Weighting::Uniform));
        assert_eq!(mix.loras.len(), 3);
        assert!(mix.loras.iter().all(|l| (l.weight - 1.0 / 3.0).abs() < 1e-7));
        assert_eq!(mix.row_request().composition, Composition::Mixture);

        let fus = Routing::from_hits(&hits(), &cfg(Strategy::Fusion, Weighting::Softmax { temperature: 0.1 }));
        let w: Vec<f32> = fus.loras.iter().map(|l| l.weight).collect();
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(w[0] > w[1] && w[1] > w[2]);
        // softmax([0.9, 0.7, 0.5] / 0.1) = e^0, e^-2, e^-4 normalised
        let z = 1.0 + (-2f32).exp() + (-4f32).exp();
        assert!((w[0] - 1.0 / z).abs() < 1e-6 && (w[2] - (-4f32).exp() / z).abs() < 1e-6);
        assert_eq!(fus.row_request().composition, Composition::Fusion);

        // Arrow: all k retrieved, weights chosen per token (1 in the routing), Arrow's own top_k.
        let arrow = Routing::from_hits(&hits(), &cfg(Strategy::Arrow, Weighting::Uniform));
        assert_eq!(arrow.loras.len(), 3);
        assert!(arrow.loras.iter().all(|l| l.weight == 1.0));
        assert_eq!(arrow.row_request().composition, Composition::Arrow(RouteConfig::default().arrow));

        // Fewer hits than k, one hit: a single LoRA.
        let one = Routing::from_hits(&hits()[..1], &cfg(Strategy::Mixture, Weighting::Uniform));
        assert_eq!(one.loras[0].weight, 1.0);
        assert_eq!(one.row_request().composition, Composition::Single);
    }

    #[test]
    fn config_is_checked_and_strategies_parse() {
        assert!(RouteConfig::default().validate().is_ok());
        assert!(RouteConfig { top_k: 0, ..RouteConfig::default() }.validate().is_err());
        let bad = RouteConfig { weighting: Weighting::Softmax { temperature: 0.0 }, ..RouteConfig::default() };
        assert!(bad.validate().is_err());
        let bad = RouteConfig { arrow: ArrowParams { top_k: 0, temperature: 1.0 }, ..RouteConfig::default() };
        assert!(bad.validate().is_err());
        for s in Strategy::ALL {
            assert_eq!(s.name().parse::<Strategy>().expect("parses"), s);
        }
        assert!("blend".parse::<Strategy>().is_err());
    }
}
