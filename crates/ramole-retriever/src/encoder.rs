//! Sentence embeddings as sentence-transformers computes them for all-MiniLM-L6-v2: WordPiece
//! tokens (truncated at `max_seq_length`, 256), BERT, attention-masked mean pooling, L2
//! normalisation.

use std::path::{Path, PathBuf};

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use ramole_models::bert::{BertModel, mask_tensor};
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationParams};

use crate::RetrieverError;

/// The instruction prepended to every sample and query before embedding (the paper's
/// instruction for LoraRetriever).
pub const DEFAULT_INSTRUCTION: &str = "Represent the sentence for similar task retrieval: ";

/// The longest input sentence-transformers feeds all-MiniLM-L6-v2 when the folder does not say.
pub const DEFAULT_MAX_SEQ_LENGTH: usize = 256;

/// Files a sentence-transformers folder must have.
const REQUIRED_FILES: [&str; 4] = ["config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json"];

/// Small files kept in memory and written back by [`SentenceEncoder::save`] when the folder has them.
const CARRIED_FILES: [&str; 9] = [
    "config.json",
    "tokenizer.json",
    "1_Pooling/config.json",
    "sentence_bert_config.json",
    "modules.json",
    "config_sentence_transformers.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
];

#[derive(Deserialize)]
struct PoolingConfig {
    word_embedding_dimension: usize,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

/// A sentence-transformers encoder with mean pooling (all-MiniLM-L6-v2 and its fine-tuned copies).
#[derive(Debug, Clone)]
pub struct SentenceEncoder<B: Backend> {
    model: BertModel<B>,
    tokenizer: Tokenizer,
    tokenizer_path: PathBuf,
    max_seq_length: usize,
    device: B::Device,
    /// (path relative to the folder, bytes) of the small files [`Self::save`] writes back.
    carried: Vec<(String, Vec<u8>)>,
    /// What [`Self::identity`] returns.
    identity: String,
}

/// The [`SentenceEncoder::identity`] of an encoder whose model was replaced in memory
/// ([`SentenceEncoder::with_model`]) and not saved and loaded since: no pool is embedded by it.
pub const UNSAVED_IDENTITY: &str = "unsaved";

/// The files of a model folder whose bytes make an encoder's identity (with the effective
/// `max_seq_length`).
const IDENTITY_FILES: [&str; 4] = ["model.safetensors", "config.json", "tokenizer.json", "1_Pooling/config.json"];

/// The identity of the encoder in `dir`: the hex sha256 of each [`IDENTITY_FILES`]' name, length
/// and bytes, then of the effective `max_seq_length`.
fn folder_identity(dir: &Path, max_seq_length: usize) -> Result<String, RetrieverError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut hasher = Sha256::new();
    hasher.update(b"ramole-encoder-identity/1\0");
    for file in IDENTITY_FILES {
        let path = dir.join(file);
        let (mut f, len) = ramole_core::fs::open_regular(&path).map_err(|e| RetrieverError::io(&path, e))?;
        hasher.update(file.as_bytes());
        hasher.update([0]);
        hasher.update(len.to_le_bytes());
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| RetrieverError::io(&path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    hasher.update(b"max_seq_length\0");
    hasher.update((max_seq_length as u64).to_le_bytes());
    let digest = hasher.finalize();
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, RetrieverError> {
    let text =
        ramole_core::fs::read_text(path, ramole_core::fs::MAX_TEXT_BYTES).map_err(|e| RetrieverError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| RetrieverError::format(path, e.to_string()))
}

impl<B: Backend> SentenceEncoder<B> {
    /// Loads a sentence-transformers folder: `config.json`, `model.safetensors`, `tokenizer.json`,
    /// `1_Pooling/config.json` (mean pooling) and, if present, `sentence_bert_config.json`
    /// (`max_seq_length`, else 256). The tokenizer's own truncation and padding are replaced.
    pub fn load(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self, RetrieverError> {
        let dir = dir.as_ref();
        if let Some(file) = REQUIRED_FILES.iter().find(|f| !dir.join(f).is_file()) {
            return Err(RetrieverError::MissingModelFile { dir: dir.into(), file: (*file).into() });
        }
        let model = BertModel::<B>::load(dir, device)?;
        let pooling_path = dir.join("1_Pooling/config.json");
        let pooling: PoolingConfig = read_json(&pooling_path)?;
        let only_mean = pooling.pooling_mode_mean_tokens
            && !(pooling.pooling_mode_cls_token
                || pooling.pooling_mode_max_tokens
                || pooling.pooling_mode_mean_sqrt_len_tokens);
        if !only_mean {
            return Err(RetrieverError::format(
                &pooling_path,
                "only mean pooling (`pooling_mode_mean_tokens`) is supported",
            ));
        }
        if pooling.word_embedding_dimension != model.config.hidden_size {
            return Err(RetrieverError::format(
                &pooling_path,
                format!(
                    "`word_embedding_dimension` {} differs from the model's hidden size {}",
                    pooling.word_embedding_dimension, model.config.hidden_size
                ),
            ));
        }
        let st_path = dir.join("sentence_bert_config.json");
        let max_seq_length = if st_path.is_file() {
            read_json::<SentenceBertConfig>(&st_path)?.max_seq_length.unwrap_or(DEFAULT_MAX_SEQ_LENGTH)
        } else {
            DEFAULT_MAX_SEQ_LENGTH
        };
        let max_seq_length = max_seq_length.clamp(2, model.config.max_position_embeddings);

        let tokenizer_path = dir.join("tokenizer.json");
        let tok_err =
            |e: tokenizers::Error| RetrieverError::Tokenizer { path: tokenizer_path.clone(), message: e.to_string() };
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(tok_err)?;
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_seq_length, ..Default::default() }))
            .map_err(tok_err)?
            .with_padding(None);

        let carried = CARRIED_FILES
            .iter()
            .filter(|f| dir.join(f).is_file())
            .map(|f| {
                let path = dir.join(f);
                ramole_core::fs::read_bounded(&path, ramole_core::fs::MAX_TEXT_BYTES)
                    .map(|b| ((*f).to_string(), b))
                    .map_err(|e| RetrieverError::io(&path, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let identity = folder_identity(dir, max_seq_length)?;
        Ok(Self { model, tokenizer, tokenizer_path, max_seq_length, device: device.clone(), carried, identity })
    }

    /// The BERT model.
    pub fn model(&self) -> &BertModel<B> {
        &self.model
    }

    /// The encoder with another BERT model (for example after a training step). Its
    /// [`Self::identity`] becomes [`UNSAVED_IDENTITY`]: save it and load it to embed a pool with it.
    pub fn with_model(self, model: BertModel<B>) -> Self {
        Self { model, identity: UNSAVED_IDENTITY.into(), ..self }
    }

    /// The encoder with another model and the identity that model has (an adapter merged into it).
    pub(crate) fn with_model_and_identity(self, model: BertModel<B>, identity: String) -> Self {
        Self { model, identity, ..self }
    }

    /// What identifies the encoder: the hex sha256 over the bytes of the folder's
    /// `model.safetensors`, `config.json`, `tokenizer.json` and `1_Pooling/config.json` and the
    /// effective [`Self::max_seq_length`], computed by [`Self::load`]. Two encoders with the same
    /// identity compute the same embeddings; a pool records the identity of the encoder that
    /// embedded it. An encoder whose model was replaced in memory ([`Self::with_model`]) has the
    /// identity [`UNSAVED_IDENTITY`].
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Whether the model was replaced in memory since the encoder was loaded ([`Self::with_model`]).
    pub fn is_unsaved(&self) -> bool {
        self.identity == UNSAVED_IDENTITY
    }

    /// The device the model lives on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The embedding width.
    pub fn dim(&self) -> usize {
        self.model.config.hidden_size
    }

    /// The longest input in tokens, `[CLS]` and `[SEP]` included.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// The token ids of a text (with `[CLS]`/`[SEP]`, truncated at [`Self::max_seq_length`]).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, RetrieverError> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| RetrieverError::Tokenizer { path: self.tokenizer_path.clone(), message: e.to_string() })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Differentiable embeddings of already tokenized texts (see [`Self::token_ids`]), padded to the
    /// longest one: [`mean_pool`] with this encoder's model and [`Self::max_seq_length`]. An empty list,
    /// an empty sequence, a sequence longer than [`Self::max_seq_length`] or an id outside the
    /// vocabulary is an [`RetrieverError::Input`].
    ///
    /// # Shapes
    /// `ids.len()` sequences → `[ids.len(), hidden]`
    pub fn encode_token_ids(&self, ids: &[Vec<u32>]) -> Result<Tensor<B, 2>, RetrieverError> {
        mean_pool(&self.model, ids, self.max_seq_length, &self.device)
    }

    /// Differentiable sentence embeddings: tokenize, BERT, attention-masked mean pooling, L2
    /// normalisation.
    ///
    /// # Shapes
    /// `texts.len()` texts → `[texts.len(), hidden]`
    pub fn encode(&self, texts: &[&str]) -> Result<Tensor<B, 2>, RetrieverError> {
        if texts.is_empty() {
            return Err(RetrieverError::Input("no text to encode".into()));
        }
        let ids = texts.iter().map(|t| self.token_ids(t)).collect::<Result<Vec<_>, _>>()?;
        self.encode_token_ids(&ids)
    }

    /// Embeddings on the host, computed `batch_size` texts at a time (texts of similar token
    /// length are batched together to limit padding; the result keeps the input order).
    pub fn embed(&self, texts: &[String], batch_size: usize) -> Result<Vec<Vec<f32>>, RetrieverError> {
        if batch_size == 0 {
            return Err(RetrieverError::InvalidArgument { name: "batch size", message: "must be at least 1".into() });
        }
        let ids = texts.iter().map(|t| self.token_ids(t)).collect::<Result<Vec<_>, _>>()?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let hidden = self.dim();
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(batch_size) {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            let values: Vec<f32> = self.encode_token_ids(&batch)?.into_data().iter::<f32>().collect();
            for (&i, row) in chunk.iter().zip(values.chunks_exact(hidden)) {
                out[i] = row.to_vec();
            }
        }
        Ok(out)
    }

    /// Writes a complete sentence-transformers folder (the model's current weights as f32
    /// safetensors and the configuration and tokenizer files it was loaded with), loadable by
    /// [`Self::load`].
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<(), RetrieverError> {
        let dir = dir.as_ref();
        for (rel, bytes) in &self.carried {
            let path = dir.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| RetrieverError::io(parent, e))?;
            }
            ramole_core::fs::write_atomic(&path, bytes).map_err(|e| RetrieverError::io(&path, e))?;
        }
        self.model.save_safetensors(&dir.join("model.safetensors"))?;
        Ok(())
    }
}

/// Sentence embeddings of already tokenized texts under `model`: the sequences are padded to the longest
/// one, run through BERT with the attention mask, mean-pooled over their real tokens and L2-normalised
/// (what sentence-transformers computes for all-MiniLM-L6-v2). Differentiable: the training loss
/// (`ramole_research::train_retriever`) and [`SentenceEncoder::encode_token_ids`] both go through it.
///
/// An empty list, an empty sequence, a sequence longer than `max_len` tokens or an id outside the model's
/// vocabulary is an [`RetrieverError::Input`] naming the sequence.
///
/// # Shapes
/// `ids.len()` sequences → `[ids.len(), hidden]`
pub fn mean_pool<B: Backend>(
    model: &BertModel<B>,
    ids: &[Vec<u32>],
    max_len: usize,
    device: &B::Device,
) -> Result<Tensor<B, 2>, RetrieverError> {
    let vocab = model.config.vocab_size;
    if ids.is_empty() {
        return Err(RetrieverError::Input("no sequence to encode".into()));
    }
    if let Some((i, s)) = ids
        .iter()
        .enumerate()
        .find(|(_, s)| s.is_empty() || s.len() > max_len || s.iter().any(|&id| id as usize >= vocab))
    {
        return Err(RetrieverError::Input(format!(
            "sequence {i}: {} tokens (1..={max_len} allowed) with ids below {vocab} required",
            s.len()
        )));
    }
    let batch = ids.len();
    let seq = ids.iter().map(Vec::len).max().unwrap_or(1);
    let mut flat = vec![0i64; batch * seq];
    let mut mask = vec![0f32; batch * seq];
    for (row, seq_ids) in ids.iter().enumerate() {
        for (col, id) in seq_ids.iter().enumerate() {
            flat[row * seq + col] = i64::from(*id);
            mask[row * seq + col] = 1.0;
        }
    }
    let hidden = model.config.hidden_size;
    let input_ids = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [batch, seq]), device); // [batch, seq]
    let mask = mask_tensor::<B>(mask, batch, seq, device); // [batch, seq]
    let h = model.forward(input_ids, mask.clone()); // [batch, seq, hidden]
    let summed = (h * mask.clone().unsqueeze_dim::<3>(2)).sum_dim(1).reshape([batch, hidden]); // [batch, hidden]
    let counts = mask.sum_dim(1).clamp_min(1e-9); // [batch, 1]
    let mean = summed / counts; // [batch, hidden]
    let norm = (mean.clone() * mean.clone()).sum_dim(1).sqrt().clamp_min(1e-12); // [batch, 1]
    Ok(mean / norm)
}
