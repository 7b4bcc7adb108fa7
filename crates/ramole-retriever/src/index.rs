//! Exact cosine top-k over a live set of LoRA embeddings.
//!
//! The index keeps one contiguous row-major `[n_loras, dim]` f32 matrix of unit vectors and the
//! names of its rows. Adding a LoRA appends a row, removing one moves the last row into its slot
//! (swap-remove): both cost O(dim), the matrix is never rebuilt. A search is one matrix product
//! `M · Qᵀ` on the host, computed block by block (a block of rows stays in cache while every query
//! of the batch is multiplied with it) and split across threads for large pools; each thread keeps
//! its own top-k lists, merged at the end. Results are ordered by score, then by name, so they do
//! not depend on the order in which LoRAs were added.
//!
//! Large pools (at least [`CODED_MIN_ROWS`] LoRAs) are searched in two passes for one to three
//! queries: int8 codes of the rows (a quarter of the bytes; integer dot products, AVX2 where the CPU
//! has it) give every row a score and a bound on its distance to the exact score; only the rows whose
//! upper bound reaches the k-th best lower bound can be in the top k, and those are re-scored from the
//! f32 rows exactly as the plain scan scores them. The result is the plain scan's, bit for bit
//! ([`Index::search_exhaustive`] is that plain scan, kept as the reference).

use std::collections::HashMap;
use std::path::PathBuf;

use crate::RetrieverError;
use crate::int8;

/// Rows multiplied with all queries before moving on (64 KiB of a 384-dim matrix: stays in L1/L2).
const ROW_BLOCK: usize = 64;
/// Multiply-adds below which a search stays on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 20;
/// The most threads a search uses.
const MAX_THREADS: usize = 8;
/// LoRAs from which one to three queries are searched through the int8 codes first.
pub const CODED_MIN_ROWS: usize = 4096;

/// One search result: a LoRA name and its cosine similarity to the query.
pub type Hit = (String, f32);

/// An in-memory index of unit vectors with exact cosine top-k search.
#[derive(Debug, Clone, Default)]
pub struct Index {
    dim: usize,
    names: Vec<String>,
    rows: HashMap<String, usize>,
    /// `[names.len(), dim]`, row-major, every row of unit length.
    data: Vec<f32>,
    /// `[names.len(), dim]`: the int8 code of each row of `data`.
    codes: Vec<i8>,
    /// Per row: the scale of its code, and the norm of what the code misses.
    code_scales: Vec<(f32, f32)>,
}

/// Four dot products sharing one operand: `[shared · others[0], …, shared · others[3]]`. The shared
/// chunk is loaded once for four products and the 4 × 8 accumulators stay in registers. All slices
/// have the same length. Eight independent accumulators per product (vectorised by the compiler).
fn dot4(shared: &[f32], others: [&[f32]; 4]) -> [f32; 4] {
    let (chunks, tail) = shared.as_chunks::<8>();
    let o = others.map(|x| x.as_chunks::<8>().0);
    let mut acc = [[0f32; 8]; 4];
    for (k, s) in chunks.iter().enumerate() {
        for (a, oc) in acc.iter_mut().zip(&o) {
            let x = &oc[k];
            for i in 0..8 {
                a[i] += s[i] * x[i];
            }
        }
    }
    let done = chunks.len() * 8;
    let mut out = acc.map(|a| a.iter().sum::<f32>());
    for (r, other) in out.iter_mut().zip(others) {
        *r += tail.iter().zip(&other[done..]).map(|(x, y)| x * y).sum::<f32>();
    }
    out
}

/// What the first pass of a two-pass search found in a range of rows.
struct Candidates {
    /// The range's `k` best lower bounds (unsorted).
    lowers: Vec<f32>,
    /// (upper bound, row) of the rows whose upper bound reached the range's k-th best lower bound
    /// when they were scored.
    rows: Vec<(f32, usize)>,
}

/// An f32 ordered by `total_cmp` (the lower bounds kept in a heap).
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrdF32(f32);

impl Eq for OrdF32 {}

impl PartialOrd for OrdF32 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrdF32 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// `v / |v|`, or `None` when `v` is zero or not finite.
pub fn normalized(v: &[f32]) -> Option<Vec<f32>> {
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    (norm.is_finite() && norm > 0.0).then(|| v.iter().map(|x| (f64::from(*x) / norm) as f32).collect())
}

/// The best `k` (score, row) pairs seen so far, best first (higher score, then smaller name).
struct TopK<'a> {
    k: usize,
    names: &'a [String],
    hits: Vec<(f32, usize)>,
}

impl<'a> TopK<'a> {
    fn new(k: usize, names: &'a [String]) -> Self {
        Self { k, names, hits: Vec::with_capacity(k + 1) }
    }

    fn better(&self, a: (f32, usize), b: (f32, usize)) -> bool {
        match a.0.total_cmp(&b.0) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => self.names[a.1] < self.names[b.1],
        }
    }

    fn offer(&mut self, score: f32, row: usize) {
        let candidate = (score, row);
        if self.hits.len() == self.k && self.hits.last().is_none_or(|last| !self.better(candidate, *last)) {
            return;
        }
        let at = self.hits.partition_point(|h| self.better(*h, candidate));
        self.hits.insert(at, candidate);
        self.hits.truncate(self.k);
    }
}

impl Index {
    /// An empty index of `dim`-dimensional vectors.
    pub fn new(dim: usize) -> Self {
        Self { dim, ..Self::default() }
    }

    /// The dimension of the vectors.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The number of LoRAs.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the index holds no LoRA.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The names, in row order (which changes on removal).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether a LoRA of this name is in the index.
    pub fn contains(&self, name: &str) -> bool {
        self.rows.contains_key(name)
    }

    /// The stored (unit) vector of a LoRA.
    pub fn vector(&self, name: &str) -> Option<&[f32]> {
        self.rows.get(name).map(|&r| &self.data[r * self.dim..(r + 1) * self.dim])
    }

    /// The row-major `[len, dim]` matrix of unit vectors.
    pub fn matrix(&self) -> &[f32] {
        &self.data
    }

    /// Adds a LoRA; the embedding is normalised to unit length. O(dim).
    pub fn add(&mut self, name: &str, embedding: Vec<f32>) -> Result<(), RetrieverError> {
        if embedding.len() != self.dim {
            return Err(RetrieverError::Dimension { name: name.into(), expected: self.dim, got: embedding.len() });
        }
        if self.rows.contains_key(name) {
            return Err(RetrieverError::DuplicateName { pool: PathBuf::from("<index>"), name: name.into() });
        }
        let unit = normalized(&embedding).ok_or_else(|| RetrieverError::BadVector { name: name.into() })?;
        self.rows.insert(name.to_string(), self.names.len());
        self.names.push(name.to_string());
        let code = int8::quantize(&unit);
        self.codes.extend_from_slice(&code.codes);
        self.code_scales.push((code.scale, code.residual));
        self.data.extend_from_slice(&unit);
        Ok(())
    }

    /// Removes a LoRA: the last row moves into its slot. O(dim).
    pub fn remove(&mut self, name: &str) -> Result<(), RetrieverError> {
        let row = self
            .rows
            .remove(name)
            .ok_or_else(|| RetrieverError::UnknownName { pool: PathBuf::from("<index>"), name: name.into() })?;
        let last = self.names.len() - 1;
        if row != last {
            self.data.copy_within(last * self.dim..(last + 1) * self.dim, row * self.dim);
            self.codes.copy_within(last * self.dim..(last + 1) * self.dim, row * self.dim);
            self.names.swap(row, last);
            self.rows.insert(self.names[row].clone(), row);
        }
        self.names.pop();
        self.data.truncate(last * self.dim);
        self.codes.truncate(last * self.dim);
        self.code_scales.swap_remove(row);
        Ok(())
    }

    /// The `k` LoRAs most similar to `query` (cosine), best first. A query of the wrong length or
    /// that cannot be normalised gets no hits; [`Self::search`] reports those as errors.
    pub fn top_k(&self, query: &[f32], k: usize) -> Vec<Hit> {
        self.top_k_batch(&[query.to_vec()], k).pop().unwrap_or_default()
    }

    /// [`Self::top_k`] for many queries: one pass over the matrix for the whole batch.
    pub fn top_k_batch(&self, queries: &[Vec<f32>], k: usize) -> Vec<Vec<Hit>> {
        let units: Vec<Option<Vec<f32>>> =
            queries.iter().map(|q| if q.len() == self.dim { normalized(q) } else { None }).collect();
        let valid: Vec<Vec<f32>> = units.iter().flatten().cloned().collect();
        let mut found = self.search_units(&valid, k).into_iter();
        units.iter().map(|u| if u.is_some() { found.next().unwrap_or_default() } else { Vec::new() }).collect()
    }

    /// Checked search: `k` must be at least 1 ([`RetrieverError::InvalidArgument`]); an error names
    /// the first query of the wrong length or that is zero/non-finite. A `k` larger than the index
    /// returns every LoRA.
    pub fn search(&self, queries: &[Vec<f32>], k: usize) -> Result<Vec<Vec<Hit>>, RetrieverError> {
        let units = self.checked_units(queries, k)?;
        Ok(self.search_units(&units, k))
    }

    /// The unit vectors of `queries`, or the error [`Self::search`] gives.
    fn checked_units(&self, queries: &[Vec<f32>], k: usize) -> Result<Vec<Vec<f32>>, RetrieverError> {
        if k == 0 {
            return Err(RetrieverError::InvalidArgument { name: "top-k", message: "must be at least 1".into() });
        }
        queries
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let name = format!("query {i}");
                if q.len() != self.dim {
                    return Err(RetrieverError::Dimension { name, expected: self.dim, got: q.len() });
                }
                normalized(q).ok_or(RetrieverError::BadVector { name })
            })
            .collect::<Result<Vec<_>, _>>()
    }

    /// [`Self::search`] by the plain f32 scan of every row, whatever the pool's size: the reference
    /// that the two-pass search of large pools must equal.
    pub fn search_exhaustive(&self, queries: &[Vec<f32>], k: usize) -> Result<Vec<Vec<Hit>>, RetrieverError> {
        let units = self.checked_units(queries, k)?;
        Ok(self.scan_all(&units, k))
    }

    /// Top-k for unit queries of the right length.
    fn search_units(&self, queries: &[Vec<f32>], k: usize) -> Vec<Vec<Hit>> {
        if self.len() >= CODED_MIN_ROWS && queries.len() < 4 {
            return queries.iter().map(|q| self.search_coded(q, k)).collect();
        }
        self.scan_all(queries, k)
    }

    /// The two-pass search of one unit query: int8 scores and bounds of every row, then the exact
    /// f32 scores of the rows that can be in the top `k`.
    fn search_coded(&self, query: &[f32], k: usize) -> Vec<Hit> {
        let k = k.min(self.len());
        if k == 0 {
            return Vec::new();
        }
        let q = int8::quantize(query);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS);
        let per_thread = self.len().div_ceil(threads);
        // Per range of rows: its k best lower bounds and the rows whose upper bound reached the k-th
        // best lower bound seen so far in the range.
        let parts: Vec<Candidates> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let rows = t * per_thread..((t + 1) * per_thread).min(self.len());
                    let q = &q;
                    s.spawn(move || self.coded_candidates(rows, q, k))
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let mut lowers: Vec<f32> = parts.iter().flat_map(|p| p.lowers.iter().copied()).collect();
        lowers.sort_by(|a, b| b.total_cmp(a));
        let threshold = lowers.get(k - 1).copied().unwrap_or(f32::NEG_INFINITY);
        // Every row of the exact top k has an upper bound ≥ its exact score ≥ the k-th best exact
        // score ≥ the k-th best lower bound: the candidates hold them all.
        let candidates: Vec<usize> = parts
            .iter()
            .flat_map(|p| p.rows.iter().filter(|(upper, _)| *upper >= threshold).map(|&(_, row)| row))
            .collect();
        let mut top = TopK::new(k, &self.names);
        for group in candidates.chunks(4) {
            let four = [0, 1, 2, 3].map(|j| self.row(group.get(j).copied().unwrap_or(group[0])));
            for (j, score) in dot4(query, four).into_iter().enumerate().take(group.len()) {
                top.offer(score, group[j]);
            }
        }
        top.hits.into_iter().map(|(score, row)| (self.names[row].clone(), score)).collect()
    }

    /// The first pass over `rows`: the `k` best lower bounds and the candidates.
    fn coded_candidates(&self, rows: std::ops::Range<usize>, q: &int8::Code, k: usize) -> Candidates {
        let mut dots = vec![0i32; ROW_BLOCK];
        let mut best: std::collections::BinaryHeap<std::cmp::Reverse<OrdF32>> = Default::default();
        let mut threshold = f32::NEG_INFINITY;
        let mut candidates = Vec::new();
        let mut start = rows.start;
        while start < rows.end {
            let end = (start + ROW_BLOCK).min(rows.end);
            let out = &mut dots[..end - start];
            int8::dots(&self.codes[start * self.dim..end * self.dim], &q.codes, out);
            for (row, &d) in (start..end).zip(out.iter()) {
                let (scale, residual) = self.code_scales[row];
                let score = q.scale * scale * d as f32;
                let bound = int8::bound(residual, q.residual);
                let (lower, upper) = (score - bound, score + bound);
                if upper < threshold {
                    continue;
                }
                candidates.push((upper, row));
                if best.len() < k {
                    best.push(std::cmp::Reverse(OrdF32(lower)));
                } else if best.peek().is_some_and(|w| lower > w.0.0) {
                    best.pop();
                    best.push(std::cmp::Reverse(OrdF32(lower)));
                }
                if best.len() == k {
                    threshold = best.peek().map_or(f32::NEG_INFINITY, |w| w.0.0);
                }
            }
            start = end;
        }
        Candidates { lowers: best.into_iter().map(|r| r.0.0).collect(), rows: candidates }
    }

    fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.dim..(r + 1) * self.dim]
    }

    /// Top-k of unit queries by the f32 scan of every row.
    fn scan_all(&self, queries: &[Vec<f32>], k: usize) -> Vec<Vec<Hit>> {
        let k = k.min(self.len());
        if k == 0 || queries.is_empty() {
            return vec![Vec::new(); queries.len()];
        }
        let work = self.len() * self.dim * queries.len();
        let threads = if work < PARALLEL_MIN_WORK {
            1
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS)
        };
        let per_thread = self.len().div_ceil(threads);
        let partial: Vec<Vec<TopK<'_>>> = if threads == 1 {
            vec![self.scan(0..self.len(), queries, k)]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let rows = t * per_thread..((t + 1) * per_thread).min(self.len());
                        s.spawn(move || self.scan(rows, queries, k))
                    })
                    .collect();
                // A scan does not panic (pure arithmetic on checked slices); a lost thread only loses hits.
                handles.into_iter().filter_map(|h| h.join().ok()).collect()
            })
        };
        (0..queries.len())
            .map(|q| {
                let mut merged = TopK::new(k, &self.names);
                for part in &partial {
                    for &(score, row) in &part[q].hits {
                        merged.offer(score, row);
                    }
                }
                merged.hits.into_iter().map(|(score, row)| (self.names[row].clone(), score)).collect()
            })
            .collect()
    }

    /// Top-k lists of every query over a range of rows.
    fn scan(&self, rows: std::ops::Range<usize>, queries: &[Vec<f32>], k: usize) -> Vec<TopK<'_>> {
        let mut tops: Vec<TopK<'_>> = queries.iter().map(|_| TopK::new(k, &self.names)).collect();
        let mut start = rows.start;
        while start < rows.end {
            let end = (start + ROW_BLOCK).min(rows.end);
            let block = &self.data[start * self.dim..end * self.dim]; // [rows in block, dim]
            let rows_in_block: Vec<&[f32]> = block.chunks_exact(self.dim).collect();
            if queries.len() < 4 {
                // Few queries: four rows at a time against each query.
                for (q, top) in queries.iter().zip(tops.iter_mut()) {
                    for (g, group) in rows_in_block.chunks(4).enumerate() {
                        let four = [0, 1, 2, 3].map(|j| group.get(j).copied().unwrap_or(group[0]));
                        for (j, score) in dot4(q, four).into_iter().enumerate().take(group.len()) {
                            top.offer(score, start + g * 4 + j);
                        }
                    }
                }
            } else {
                // A batch: each row against four queries at a time (the row is read once per four).
                for (qg, group) in queries.chunks(4).enumerate() {
                    let four = [0, 1, 2, 3].map(|j| group.get(j).unwrap_or(&group[0]).as_slice());
                    for (i, row) in rows_in_block.iter().enumerate() {
                        for (j, score) in dot4(row, four).into_iter().enumerate().take(group.len()) {
                            tops[qg * 4 + j].offer(score, start + i);
                        }
                    }
                }
            }
            start = end;
        }
        tops
    }

    /// The entries sorted by name: what two indexes holding the same LoRAs have in common,
    /// whatever order they were added in.
    pub fn sorted_entries(&self) -> Vec<(&str, &[f32])> {
        let mut v: Vec<(&str, &[f32])> = self
            .names
            .iter()
            .enumerate()
            .map(|(r, n)| (n.as_str(), &self.data[r * self.dim..(r + 1) * self.dim]))
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }
}

/// Two indexes are equal when they hold the same dimension and the same (name, vector) pairs,
/// in any row order.
impl PartialEq for Index {
    fn eq(&self, other: &Self) -> bool {
        self.dim == other.dim && self.sorted_entries() == other.sorted_entries()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_force(index: &Index, q: &[f32], k: usize) -> Vec<Hit> {
        let q = normalized(q).expect("query");
        let mut all: Vec<Hit> = index
            .names()
            .iter()
            .map(|n| {
                let v = index.vector(n).expect("vector");
                (n.clone(), v.iter().zip(&q).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>() as f32)
            })
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn top_k_matches_brute_force_single_and_threaded() {
        // 3000 x 384 x 8 queries is above the threading threshold.
        let mut index = Index::new(384);
        for i in 0..3000 {
            index.add(&format!("l{i}"), pseudo_random(384, i)).expect("add");
        }
        let queries: Vec<Vec<f32>> = (0..8).map(|q| pseudo_random(384, 10_000 + q)).collect();
        let batch = index.top_k_batch(&queries, 10);
        for (q, got) in queries.iter().zip(&batch) {
            let want = brute_force(&index, q, 10);
            assert_eq!(got.iter().map(|h| &h.0).collect::<Vec<_>>(), want.iter().map(|h| &h.0).collect::<Vec<_>>());
            for (g, w) in got.iter().zip(&want) {
                assert!((g.1 - w.1).abs() < 1e-5);
            }
            assert_eq!(&index.top_k(q, 10), got, "single query and batch must agree");
        }
    }

    #[test]
    fn add_normalises_and_remove_swaps() {
        let mut index = Index::new(2);
        index.add("a", vec![3.0, 4.0]).expect("add");
        index.add("b", vec![0.0, 2.0]).expect("add");
        index.add("c", vec![-1.0, 0.0]).expect("add");
        assert_eq!(index.vector("a"), Some(&[0.6, 0.8][..]));
        index.remove("a").expect("remove");
        assert_eq!(index.names(), &["c".to_string(), "b".to_string()]);
        assert_eq!(index.matrix(), &[-1.0, 0.0, 0.0, 1.0]);
        let hits = index.top_k(&[0.0, 5.0], 5);
        assert_eq!(hits, vec![("b".to_string(), 1.0), ("c".to_string(), 0.0)]);
    }

    #[test]
    fn ties_break_by_name_and_errors_are_typed() {
        let mut index = Index::new(2);
        for n in ["z", "m", "a"] {
            index.add(n, vec![1.0, 1.0]).expect("add");
        }
        let names: Vec<String> = index.top_k(&[1.0, 0.0], 2).into_iter().map(|h| h.0).collect();
        assert_eq!(names, ["a", "m"]);
        assert!(matches!(index.add("a", vec![1.0, 0.0]), Err(RetrieverError::DuplicateName { .. })));
        assert!(matches!(index.add("x", vec![1.0]), Err(RetrieverError::Dimension { expected: 2, got: 1, .. })));
        assert!(matches!(index.add("x", vec![0.0, 0.0]), Err(RetrieverError::BadVector { .. })));
        assert!(matches!(index.add("x", vec![f32::NAN, 1.0]), Err(RetrieverError::BadVector { .. })));
        assert!(matches!(index.remove("x"), Err(RetrieverError::UnknownName { .. })));
        assert!(matches!(index.search(&[vec![1.0]], 1), Err(RetrieverError::Dimension { .. })));
        // A top-k of 0 is a typed error naming the setting, not an empty result; k above the size is fine.
        assert!(matches!(
            index.search(&[vec![1.0, 0.0]], 0),
            Err(RetrieverError::InvalidArgument { name: "top-k", .. })
        ));
        assert_eq!(index.search(&[vec![1.0, 0.0]], 5).expect("k > len")[0].len(), 3);
        assert!(index.top_k(&[1.0], 3).is_empty());
        assert_eq!(index.len(), 3);
    }
}
