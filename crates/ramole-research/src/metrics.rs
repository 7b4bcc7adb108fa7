//! Answer-quality metrics for the LoraRetriever / RAMoLE comparison on BIG-bench style tasks.
//!
//! Every function takes the **prediction first** and the target(s) second (sacrebleu's order;
//! note that rouge-score's `RougeScorer.score` takes the target first). All scores lie in `[0, 1]`.
//!
//! - [`exact_match`], [`exact_match_any`]: string equality after [`normalize_answer`].
//!   [`exact_match_loraretriever`] is the exact rule of the released LoraRetriever scripts.
//! - [`sentence_bleu`]: sacrebleu's `sentence_bleu` with its defaults (13a tokenizer, mixed case,
//!   `smooth_method='exp'`, `use_effective_order=True`), divided by 100. [`tokenize_13a`] and
//!   [`BleuStats`] expose the pieces.
//! - [`rouge`], [`rouge_multi`]: rouge-score's `RougeScorer(['rouge1', 'rouge2', 'rougeL'],
//!   use_stemmer=False)`, `score` / `score_multi`. [`rouge_tokenize`] is its default tokenizer.
//! - [`score`] computes all of them at once into a [`MetricSet`]; [`MetricSet::mean`] averages.
//!
//! Text is handled as Unicode scalar values, like Python's `str`; "whitespace" means what
//! Python's `str.isspace` / `str.split()` mean (Rust's `char::is_whitespace` plus U+001C..U+001F).

use std::collections::HashMap;
use std::ops::AddAssign;

use serde::{Deserialize, Serialize};

/// Python's `str.isspace` for one character: Rust's `White_Space` set plus the four
/// information separators U+001C..U+001F, which Python's `str.split()` also splits on.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.split()`: split on runs of whitespace, dropping empty pieces.
fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|t| !t.is_empty())
}

// ---------------------------------------------------------------------------------------------
// Exact match
// ---------------------------------------------------------------------------------------------

/// Normalises an answer for exact match: lower-cases it, collapses every run of whitespace to a
/// single space, and strips leading and trailing whitespace and `'.'` characters.
///
/// `" The  Answer. "` and `"the answer"` both normalise to `"the answer"`. Periods inside the
/// answer (`"3.5"`, `"u.s.a"`) are kept; see [`exact_match_loraretriever`] for the released
/// LoraRetriever rule, which deletes every period.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let collapsed = py_split(&lower).collect::<Vec<_>>().join(" ");
    collapsed.trim_matches(|c: char| c == '.' || c == ' ').to_owned()
}

/// Whether `prediction` equals `target` after [`normalize_answer`] on both.
pub fn exact_match(prediction: &str, target: &str) -> bool {
    normalize_answer(prediction) == normalize_answer(target)
}

/// Whether `prediction` exactly matches (see [`exact_match`]) any of `targets`; BIG-bench
/// examples may list several acceptable targets. `false` when `targets` is empty.
pub fn exact_match_any<S: AsRef<str>>(prediction: &str, targets: &[S]) -> bool {
    let p = normalize_answer(prediction);
    targets.iter().any(|t| normalize_answer(t.as_ref()) == p)
}

/// Exact match as the released LoraRetriever evaluation scripts compute it
/// (`summarize_results.py`: `calculate_em` / `cal_correct`): the target is first cut at its
/// first blank line (`target.split("\n\n")[0]`), then both sides are compared after
/// `s.strip().lower().replace(".", "")`, which deletes **every** period (so `"3.5"` matches
/// `"35"`) and does not collapse inner whitespace.
pub fn exact_match_loraretriever(prediction: &str, target: &str) -> bool {
    fn norm(s: &str) -> String {
        s.trim_matches(is_py_space).to_lowercase().replace('.', "")
    }
    let target = target.split("\n\n").next().unwrap_or(target);
    norm(prediction) == norm(target)
}

// ---------------------------------------------------------------------------------------------
// BLEU (sacrebleu)
// ---------------------------------------------------------------------------------------------

/// The highest n-gram order BLEU counts (sacrebleu's `MAX_NGRAM_ORDER`).
pub const BLEU_MAX_ORDER: usize = 4;

/// sacrebleu's `TokenizerRegexp` first rule: `([\{-\~\[-\` -\&\(-\+\:-\@\/])` -> `' \1 '`.
fn is_13a_symbol(c: char) -> bool {
    matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/')
}

/// Applies one `re.sub` whose pattern is two single-character classes, emulating Python's
/// leftmost, non-overlapping scan; `emit` writes the replacement of a match.
fn sub_pairs(
    chars: &[char],
    first: impl Fn(char) -> bool,
    second: impl Fn(char) -> bool,
    emit: impl Fn(&mut Vec<char>, char, char),
) -> Vec<char> {
    let mut out = Vec::with_capacity(chars.len() + chars.len() / 2);
    let mut i = 0;
    while i < chars.len() {
        if i + 1 < chars.len() && first(chars[i]) && second(chars[i + 1]) {
            emit(&mut out, chars[i], chars[i + 1]);
            i += 2;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// sacrebleu's BLEU preprocessing (`_preprocess_segment` without lower-casing: `rstrip`, then
/// `Tokenizer13a`) as a list of tokens.
fn tokens_13a(line: &str) -> Vec<String> {
    // BLEU._preprocess_segment: `self.tokenizer(sent.rstrip())`.
    let line = line.trim_end_matches(is_py_space);
    // Tokenizer13a: language-independent part.
    let mut line = line.replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if line.contains('&') {
        line = line.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    }
    // TokenizerRegexp on f' {line} '.
    let mut chars: Vec<char> = Vec::with_capacity(line.len() * 2 + 2);
    for c in format!(" {line} ").chars() {
        if is_13a_symbol(c) {
            chars.extend([' ', c, ' ']);
        } else {
            chars.push(c);
        }
    }
    let is_digit = |c: char| c.is_ascii_digit();
    let is_period_comma = |c: char| c == '.' || c == ',';
    // Period and comma unless preceded by a digit: `([^0-9])([\.,])` -> `\1 \2 `.
    let chars = sub_pairs(&chars, |c| !is_digit(c), is_period_comma, |o, a, b| o.extend([a, ' ', b, ' ']));
    // Period and comma unless followed by a digit: `([\.,])([^0-9])` -> ` \1 \2`.
    let chars = sub_pairs(&chars, is_period_comma, |c| !is_digit(c), |o, a, b| o.extend([' ', a, ' ', b]));
    // Dash when preceded by a digit: `([0-9])(-)` -> `\1 \2 `.
    let chars = sub_pairs(&chars, is_digit, |c| c == '-', |o, a, b| o.extend([a, ' ', b, ' ']));
    let line: String = chars.into_iter().collect();
    py_split(&line).map(str::to_owned).collect()
}

/// sacrebleu's `13a` tokenisation of one segment, as BLEU applies it (after `rstrip`, mixed
/// case): `<skipped>` and `-\n` removed, newlines to spaces, `&quot;` `&amp;` `&lt;` `&gt;`
/// unescaped, ASCII punctuation split off (periods and commas only when not next to a digit,
/// dashes only after a digit), tokens joined by single spaces.
///
/// ```
/// use ramole_research::metrics::tokenize_13a;
/// assert_eq!(tokenize_13a("It wasn't 3.5-fold, &quot;really&quot;."), "It wasn't 3.5 - fold , \" really \" .");
/// ```
pub fn tokenize_13a(line: &str) -> String {
    tokens_13a(line).join(" ")
}

/// Counts every n-gram of order 1..=[`BLEU_MAX_ORDER`] (sacrebleu's `extract_all_word_ngrams`).
fn bleu_ngrams(tokens: &[String]) -> HashMap<&[String], u64> {
    let mut counts = HashMap::new();
    for n in 1..=BLEU_MAX_ORDER {
        for gram in tokens.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

/// sacrebleu's `_get_closest_ref_len`: the reference length closest to `hyp_len`, the shorter
/// one on a tie; 0 without references.
fn closest_ref_len(hyp_len: usize, ref_lens: impl IntoIterator<Item = usize>) -> usize {
    let mut best: Option<(usize, usize)> = None; // (diff, len)
    for len in ref_lens {
        let diff = hyp_len.abs_diff(len);
        best = match best {
            Some((d, l)) if d < diff || (d == diff && l <= len) => Some((d, l)),
            _ => Some((diff, len)),
        };
    }
    best.map_or(0, |(_, len)| len)
}

/// sacrebleu's `my_log`: `log`, with `log(0)` floored to `-9999999999`.
fn floored_ln(x: f64) -> f64 {
    if x == 0.0 { -9_999_999_999.0 } else { x.ln() }
}

/// BLEU's sufficient statistics for one segment, or summed (`+=`) over a corpus: sacrebleu's
/// `[hyp_len, ref_len] + correct + total` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BleuStats {
    /// Hypothesis length in 13a tokens.
    pub hyp_len: u64,
    /// Length of the reference closest in length to the hypothesis (shorter on ties).
    pub ref_len: u64,
    /// Clipped n-gram matches per order 1..=4 (a hypothesis n-gram counts at most as often as
    /// it occurs in the reference that holds it most often).
    pub correct: [u64; BLEU_MAX_ORDER],
    /// Hypothesis n-grams per order 1..=4.
    pub total: [u64; BLEU_MAX_ORDER],
}

impl AddAssign for BleuStats {
    fn add_assign(&mut self, rhs: Self) {
        self.hyp_len += rhs.hyp_len;
        self.ref_len += rhs.ref_len;
        for n in 0..BLEU_MAX_ORDER {
            self.correct[n] += rhs.correct[n];
            self.total[n] += rhs.total[n];
        }
    }
}

impl BleuStats {
    /// BLEU from these statistics with sacrebleu's `exp` smoothing (`BLEU.compute_bleu`), in
    /// `[0, 1]` (sacrebleu's 0-100 value divided by 100; float noise above 1 is clamped).
    ///
    /// - brevity penalty `exp(1 - ref_len / hyp_len)` when `hyp_len < ref_len` (0 for an empty
    ///   hypothesis), else 1;
    /// - 0 when no n-gram of any order matches;
    /// - precision `correct / total` per order, and for an order with no match
    ///   `1 / (2^k * total)` where `k` counts the match-less orders so far;
    /// - the orders averaged (geometric mean) stop at the first order with no hypothesis n-gram
    ///   when `effective_order` is true (sentence BLEU), else all four are used.
    pub fn score(&self, effective_order: bool) -> f64 {
        let sys_len = self.hyp_len as f64;
        let ref_len = self.ref_len as f64;
        let bp = if self.hyp_len < self.ref_len {
            if self.hyp_len > 0 { (1.0 - ref_len / sys_len).exp() } else { 0.0 }
        } else {
            1.0
        };
        if self.correct.iter().all(|&c| c == 0) {
            return 0.0;
        }
        let mut precisions = [0.0_f64; BLEU_MAX_ORDER];
        let mut smooth_mteval = 1.0_f64;
        let mut eff_order = BLEU_MAX_ORDER;
        for n in 1..=BLEU_MAX_ORDER {
            let (correct, total) = (self.correct[n - 1], self.total[n - 1]);
            if total == 0 {
                break;
            }
            if effective_order {
                eff_order = n;
            }
            precisions[n - 1] = if correct == 0 {
                smooth_mteval *= 2.0;
                100.0 / (smooth_mteval * total as f64)
            } else {
                100.0 * correct as f64 / total as f64
            };
        }
        let log_sum = precisions[..eff_order].iter().fold(0.0, |acc, &p| acc + floored_ln(p));
        let score = bp * (log_sum / eff_order as f64).exp();
        (score / 100.0).clamp(0.0, 1.0)
    }
}

/// BLEU statistics of `hypothesis` against `references` (sacrebleu's
/// `_compute_segment_statistics`): reference n-gram counts are merged by maximum, and the
/// reference length is the closest one. Empty-string references count (length 0).
pub fn bleu_stats<S: AsRef<str>>(hypothesis: &str, references: &[S]) -> BleuStats {
    let hyp = tokens_13a(hypothesis);
    let refs: Vec<Vec<String>> = references.iter().map(|r| tokens_13a(r.as_ref())).collect();
    let mut ref_ngrams: HashMap<&[String], u64> = HashMap::new();
    for r in &refs {
        for (gram, count) in bleu_ngrams(r) {
            let slot = ref_ngrams.entry(gram).or_insert(0);
            *slot = (*slot).max(count);
        }
    }
    let mut stats = BleuStats {
        hyp_len: hyp.len() as u64,
        ref_len: closest_ref_len(hyp.len(), refs.iter().map(Vec::len)) as u64,
        ..BleuStats::default()
    };
    for (gram, count) in bleu_ngrams(&hyp) {
        let n = gram.len() - 1;
        stats.total[n] += count;
        if let Some(&in_ref) = ref_ngrams.get(gram) {
            stats.correct[n] += count.min(in_ref);
        }
    }
    stats
}

/// Sentence BLEU-4 in `[0, 1]`, as `sacrebleu.sentence_bleu(hypothesis, references).score / 100`
/// with its defaults: 13a tokenizer, case-sensitive, `exp` smoothing, effective order.
/// 0 when `references` is empty (where sacrebleu raises) or nothing matches.
pub fn sentence_bleu<S: AsRef<str>>(hypothesis: &str, references: &[S]) -> f64 {
    bleu_stats(hypothesis, references).score(true)
}

// ---------------------------------------------------------------------------------------------
// ROUGE (rouge-score)
// ---------------------------------------------------------------------------------------------

/// rouge-score's default tokenizer without stemming (`tokenize.tokenize(text, None)`):
/// lower-case, replace every run of characters outside `[a-z0-9]` with a space, split, drop
/// empty tokens. Non-ASCII letters are separators (`"café"` gives `["caf"]`), except the two
/// whose lower case is ASCII: `'İ'` (U+0130, lower-cases to `i` + U+0307) and the Kelvin sign.
pub fn rouge_tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        for l in c.to_lowercase() {
            if l.is_ascii_lowercase() || l.is_ascii_digit() {
                current.push(l);
            } else if !current.is_empty() {
                tokens.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
}

/// One ROUGE score: precision, recall and their harmonic mean.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RougeScore {
    /// Matched units over prediction units.
    pub precision: f64,
    /// Matched units over target units.
    pub recall: f64,
    /// `2 p r / (p + r)`, 0 when `p + r == 0`.
    pub fmeasure: f64,
}

impl RougeScore {
    fn new(precision: f64, recall: f64) -> Self {
        let fmeasure = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
        Self { precision, recall, fmeasure }
    }
}

/// ROUGE-1, ROUGE-2 and ROUGE-L of one prediction.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RougeScores {
    /// Unigram overlap.
    pub rouge1: RougeScore,
    /// Bigram overlap.
    pub rouge2: RougeScore,
    /// Longest common subsequence (rouge-score's `rougeL`, not the summary-level `rougeLsum`).
    pub rouge_l: RougeScore,
}

fn rouge_ngrams(tokens: &[String], n: usize) -> HashMap<&[String], u64> {
    let mut counts = HashMap::new();
    for gram in tokens.windows(n) {
        *counts.entry(gram).or_insert(0) += 1;
    }
    counts
}

/// rouge-score's `_score_ngrams`: clipped n-gram overlap; precision over `max(#pred, 1)`,
/// recall over `max(#target, 1)`.
fn rouge_n_tokens(prediction: &[String], target: &[String], n: usize) -> RougeScore {
    let target_ngrams = rouge_ngrams(target, n);
    let prediction_ngrams = rouge_ngrams(prediction, n);
    let overlap: u64 =
        target_ngrams.iter().map(|(gram, &c)| c.min(prediction_ngrams.get(gram).copied().unwrap_or(0))).sum();
    let target_count: u64 = target_ngrams.values().sum();
    let prediction_count: u64 = prediction_ngrams.values().sum();
    RougeScore::new(overlap as f64 / prediction_count.max(1) as f64, overlap as f64 / target_count.max(1) as f64)
}

/// Length of the longest common subsequence, in two rows of the usual DP table.
fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0_usize; b.len() + 1];
    let mut cur = vec![0_usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y { prev[j] + 1 } else { prev[j + 1].max(cur[j]) };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// rouge-score's `_score_lcs`: all zero when either side has no token.
fn rouge_l_tokens(prediction: &[String], target: &[String]) -> RougeScore {
    if prediction.is_empty() || target.is_empty() {
        return RougeScore::default();
    }
    let lcs = lcs_len(target, prediction) as f64;
    RougeScore::new(lcs / prediction.len() as f64, lcs / target.len() as f64)
}

fn rouge_tokens(prediction: &[String], target: &[String]) -> RougeScores {
    RougeScores {
        rouge1: rouge_n_tokens(prediction, target, 1),
        rouge2: rouge_n_tokens(prediction, target, 2),
        rouge_l: rouge_l_tokens(prediction, target),
    }
}

/// ROUGE-N (n-gram overlap) of `prediction` against `target` with [`rouge_tokenize`];
/// rouge-score's `rouge{n}` (`n` of 0 yields all zeros, where rouge-score raises).
pub fn rouge_n(prediction: &str, target: &str, n: usize) -> RougeScore {
    if n == 0 {
        return RougeScore::default();
    }
    rouge_n_tokens(&rouge_tokenize(prediction), &rouge_tokenize(target), n)
}

/// ROUGE-1, ROUGE-2 and ROUGE-L of `prediction` against one `target`, as
/// `RougeScorer(['rouge1', 'rouge2', 'rougeL'], use_stemmer=False).score(target, prediction)`.
pub fn rouge(prediction: &str, target: &str) -> RougeScores {
    rouge_tokens(&rouge_tokenize(prediction), &rouge_tokenize(target))
}

/// ROUGE against several targets, as rouge-score's `score_multi(targets, prediction)`: for each
/// ROUGE type separately, the score of the target with the highest F-measure (the first one on
/// a tie). All zeros when `targets` is empty (where rouge-score raises).
pub fn rouge_multi<S: AsRef<str>>(prediction: &str, targets: &[S]) -> RougeScores {
    let pred = rouge_tokenize(prediction);
    let mut best: Option<RougeScores> = None;
    for target in targets {
        let s = rouge_tokens(&pred, &rouge_tokenize(target.as_ref()));
        best = Some(match best {
            None => s,
            Some(b) => RougeScores {
                rouge1: if s.rouge1.fmeasure > b.rouge1.fmeasure { s.rouge1 } else { b.rouge1 },
                rouge2: if s.rouge2.fmeasure > b.rouge2.fmeasure { s.rouge2 } else { b.rouge2 },
                rouge_l: if s.rouge_l.fmeasure > b.rouge_l.fmeasure { s.rouge_l } else { b.rouge_l },
            },
        });
    }
    best.unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// All metrics at once
// ---------------------------------------------------------------------------------------------

/// Every metric of one prediction (or, from [`MetricSet::mean`], the average over many), each
/// in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct MetricSet {
    /// 1.0 when [`exact_match_any`] holds, else 0.0.
    pub em: f64,
    /// [`sentence_bleu`] with all targets as references.
    pub bleu: f64,
    /// ROUGE-1 F-measure, best target ([`rouge_multi`]).
    pub rouge1: f64,
    /// ROUGE-2 F-measure, best target.
    pub rouge2: f64,
    /// ROUGE-L F-measure, best target.
    pub rouge_l: f64,
}

impl MetricSet {
    /// The field-wise mean of `sets`; `None` when there are none.
    pub fn mean<'a>(sets: impl IntoIterator<Item = &'a MetricSet>) -> Option<MetricSet> {
        let mut sum = MetricSet::default();
        let mut n = 0_usize;
        for s in sets {
            sum.em += s.em;
            sum.bleu += s.bleu;
            sum.rouge1 += s.rouge1;
            sum.rouge2 += s.rouge2;
            sum.rouge_l += s.rouge_l;
            n += 1;
        }
        (n > 0).then(|| {
            let n = n as f64;
            MetricSet {
                em: sum.em / n,
                bleu: sum.bleu / n,
                rouge1: sum.rouge1 / n,
                rouge2: sum.rouge2 / n,
                rouge_l: sum.rouge_l / n,
            }
        })
    }
}

/// Scores `prediction` against `targets` on every metric: exact match against any target,
/// sentence BLEU with the targets as multiple references (sacrebleu semantics), and ROUGE F1
/// of the best target per type (rouge-score's `score_multi`). All zero when `targets` is empty.
pub fn score<S: AsRef<str>>(prediction: &str, targets: &[S]) -> MetricSet {
    let r = rouge_multi(prediction, targets);
    MetricSet {
        em: if exact_match_any(prediction, targets) { 1.0 } else { 0.0 },
        bleu: sentence_bleu(prediction, targets),
        rouge1: r.rouge1.fmeasure,
        rouge2: r.rouge2.fmeasure,
        rouge_l: r.rouge_l.fmeasure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_ref_len_prefers_shorter_on_tie() {
        assert_eq!(closest_ref_len(5, [3, 7]), 3);
        assert_eq!(closest_ref_len(5, [7, 3]), 3);
        assert_eq!(closest_ref_len(5, [9, 6, 4]), 4);
        assert_eq!(closest_ref_len(5, []), 0);
    }

    #[test]
    fn sub_pairs_is_non_overlapping_left_to_right() {
        // Python 3.11: re.sub(r'([^0-9])([\.,])', r'\1 \2 ', s) for these inputs.
        let run = |s: &str| -> String {
            let chars: Vec<char> = s.chars().collect();
            sub_pairs(&chars, |c| !c.is_ascii_digit(), |c| c == '.' || c == ',', |o, a, b| o.extend([a, ' ', b, ' ']))
                .into_iter()
                .collect()
        };
        assert_eq!(run(" a..."), " a . . . ");
        assert_eq!(run("1..,2.,"), "1. . ,2. , ");
    }

    #[test]
    fn lcs_matches_rouge_score_lcs_table_test() {
        // rouge_scorer_test.py testLcsTable: ref [1,2,3,4,5], c1 [2,5,3,4] -> 3; c2 [8,9] -> 0.
        let v = |xs: &[u32]| xs.iter().map(u32::to_string).collect::<Vec<_>>();
        assert_eq!(lcs_len(&v(&[1, 2, 3, 4, 5]), &v(&[2, 5, 3, 4])), 3);
        assert_eq!(lcs_len(&v(&[1, 2, 3, 4, 5]), &v(&[8, 9])), 0);
    }

    #[test]
    fn rouge_tokenize_only_two_non_ascii_chars_lowercase_to_ascii() {
        // Python 3.11 (Unicode 14): the only code points above U+007F whose `.lower()` contains a
        // character of [a-z0-9] are U+0130 and U+212A. Rust's tables must agree, or
        // `rouge_tokenize` would diverge from rouge-score.
        let odd: Vec<u32> = (0x80..=0x10FFFF_u32)
            .filter_map(char::from_u32)
            .filter(|c| c.to_lowercase().any(|l| l.is_ascii_lowercase() || l.is_ascii_digit()))
            .map(u32::from)
            .collect();
        assert_eq!(odd, vec![0x130, 0x212A]);
    }
}
