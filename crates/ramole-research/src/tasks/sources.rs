//! The public collections the suite is drawn from, and how each file format becomes records.
//!
//! A [`DataFile`] is the bytes of one upstream file (gzip-compressed when vendored); a [`Format`] says how
//! its records read. [`parse`] turns a file into [`Record`]s: the raw input (before any phrasing
//! template), the target, the choices of a multiple-choice example, and the split the file stands for.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// The largest decompressed size of one data file: the vendored files are at most a few MB.
const MAX_FILE_BYTES: u64 = 64 << 20;

/// A public task collection (`crates/ramole-research/data/NOTICE.md` has each one's repository, commit
/// and licence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// BIG-bench tasks in their `task.json` format (Apache-2.0).
    Bigbench,
    /// Instruction Induction (Apache-2.0): `induce` and `execute` are disjoint train and test splits.
    InstructionInduction,
    /// The function-vectors task files (MIT): short input → output mappings.
    FunctionVectors,
    /// llm-foundry's local evaluation data (Apache-2.0; each upstream set keeps its own licence).
    LlmFoundry,
}

impl Source {
    /// The collection's folder name under `data/` (also its name in `suite.json` and `tasks list`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bigbench => "bigbench",
            Self::InstructionInduction => "instruction-induction",
            Self::FunctionVectors => "function-vectors",
            Self::LlmFoundry => "llm-foundry",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a file's records read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A BIG-bench `task.json`: `examples` with `input` and `target` (a string or a list) or
    /// `target_scores`; the task's prefixes compose the prompt when the task has no templates.
    BigbenchTask,
    /// An Instruction Induction file: `{"examples": {"1": {"input", "output"}, ...}}`.
    InductionExamples,
    /// A function-vectors file: a list of `{"input", "output"}`.
    InputOutputList,
    /// llm-foundry's language-modelling schema, one JSON object a line: `{"context", "continuation"}`.
    FoundryContinuation,
    /// llm-foundry's multiple-choice schema: `{"query", "choices", "gold"}`; the target is the gold choice.
    /// When the choices are the letters the query lists (`"A"`, `"B"`, …) the input is the query; otherwise
    /// the choices are appended to it as options.
    FoundryChoice,
    /// llm-foundry's schema of partial contexts (Winogrande, WSC): `{"context_options", "continuation",
    /// "gold"}`; the input asks which option the blank is, the target is the gold option's last word(s).
    FoundrySchema,
}

/// Which split a file stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRole {
    /// Any split: the suite draws train and test from the file's examples.
    Any,
    /// Training examples only (Instruction Induction's `induce`).
    Train,
    /// Test examples only (Instruction Induction's `execute`).
    Test,
}

/// One upstream file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    /// Its path inside its collection (e.g. `abstractive/country-capital.json`).
    pub path: String,
    /// Its bytes: gzip-compressed when `gzipped`.
    pub bytes: Cow<'static, [u8]>,
    /// Whether `bytes` is a gzip stream.
    pub gzipped: bool,
    /// The split it stands for.
    pub role: FileRole,
}

impl DataFile {
    /// A vendored, gzip-compressed file.
    pub const fn vendored(path: &'static str, bytes: &'static [u8], role: FileRole) -> VendoredFile {
        VendoredFile { path, bytes, role }
    }

    /// A file given as plain bytes (tests, other data).
    pub fn plain(path: &str, bytes: impl Into<Vec<u8>>, role: FileRole) -> Self {
        Self { path: path.to_owned(), bytes: Cow::Owned(bytes.into()), gzipped: false, role }
    }

    /// The file's contents, decompressed.
    pub fn contents(&self) -> Result<Vec<u8>, String> {
        if !self.gzipped {
            return Ok(self.bytes.to_vec());
        }
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&self.bytes[..])
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("not a gzip stream: {e}"))?;
        if out.len() as u64 > MAX_FILE_BYTES {
            return Err(format!("larger than {MAX_FILE_BYTES} bytes once decompressed"));
        }
        Ok(out)
    }
}

/// A file compiled into the binary (see [`DataFile::vendored`]).
#[derive(Debug, Clone, Copy)]
pub struct VendoredFile {
    path: &'static str,
    bytes: &'static [u8],
    role: FileRole,
}

impl From<VendoredFile> for DataFile {
    fn from(v: VendoredFile) -> Self {
        Self { path: v.path.to_owned(), bytes: Cow::Borrowed(v.bytes), gzipped: true, role: v.role }
    }
}

/// One example of a file before phrasing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The example's input (for BIG-bench tasks without templates: the composed prompt).
    pub input: String,
    /// The expected answer.
    pub target: String,
    /// The choices of a multiple-choice example.
    pub choices: Option<Vec<String>>,
}

/// Parses one file (decompressed `bytes`) of `format`; `Err` says what is wrong (and which record).
/// `compose_bigbench`: whether BIG-bench examples get the task's own prefixes (tasks without templates).
pub fn parse(format: Format, bytes: &[u8], compose_bigbench: bool) -> Result<Vec<Record>, String> {
    match format {
        Format::BigbenchTask => parse_bigbench(bytes, compose_bigbench),
        Format::InductionExamples => {
            let raw: InductionFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
            Ok(raw.examples.0.into_iter().map(|e| plain(e.input, e.output.first())).collect())
        }
        Format::InputOutputList => {
            let raw: Vec<InputOutput> = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
            Ok(raw.into_iter().map(|e| plain(e.input, e.output.first())).collect())
        }
        Format::FoundryContinuation | Format::FoundryChoice | Format::FoundrySchema => {
            let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
            let mut out = Vec::new();
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let at = |m: String| format!("line {}: {m}", i + 1);
                let rec = match format {
                    Format::FoundryContinuation => {
                        let r: Continuation = serde_json::from_str(line).map_err(|e| at(e.to_string()))?;
                        plain(r.context.trim_end().to_owned(), r.continuation.trim().to_owned())
                    }
                    Format::FoundryChoice => {
                        let r: Choice = serde_json::from_str(line).map_err(|e| at(e.to_string()))?;
                        choice_record(r).map_err(at)?
                    }
                    _ => {
                        let r: Schema = serde_json::from_str(line).map_err(|e| at(e.to_string()))?;
                        schema_record(r).map_err(at)?
                    }
                };
                out.push(rec);
            }
            Ok(out)
        }
    }
}

fn plain(input: String, target: String) -> Record {
    Record { input, target, choices: None }
}

/// A string or a list of strings (the first is the target).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn first(self) -> String {
        match self {
            Self::One(s) => s,
            Self::Many(v) => v.into_iter().next().unwrap_or_default(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct InputOutput {
    input: String,
    output: OneOrMany,
}

/// Instruction Induction's `examples` object, in file order.
#[derive(Debug)]
struct Ordered(Vec<InputOutput>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of id -> {input, output}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some((_, e)) = map.next_entry::<String, InputOutput>()? {
                    v.push(e);
                }
                Ok(Ordered(v))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Debug, Deserialize)]
struct InductionFile {
    examples: Ordered,
}

#[derive(Debug, Deserialize)]
struct Continuation {
    context: String,
    continuation: String,
}

#[derive(Debug, Deserialize)]
struct Choice {
    query: String,
    choices: Vec<String>,
    gold: usize,
}

#[derive(Debug, Deserialize)]
struct Schema {
    context_options: Vec<String>,
    continuation: String,
    gold: usize,
}

fn choice_record(r: Choice) -> Result<Record, String> {
    let target = r.choices.get(r.gold).ok_or_else(|| format!("gold {} of {} choices", r.gold, r.choices.len()))?;
    let target = target.trim().to_owned();
    let query = r.query.trim_end();
    let lettered =
        r.choices.iter().enumerate().all(|(i, c)| c.trim().len() == 1 && c.trim().as_bytes()[0] == b'A' + i as u8);
    let input = if lettered || r.choices.iter().all(|c| query.contains(c.trim())) {
        query.to_owned()
    } else {
        // The options go before a closing answer cue (`"\nAnswer:"`, `"\nA:"`), which stays last.
        let (body, cue) = match query.rsplit_once('\n') {
            Some((body, last)) if last.ends_with(':') && last.len() <= 12 => (body, Some(last)),
            _ => (query, None),
        };
        let mut s = format!("{body}\nOptions:");
        for c in &r.choices {
            s.push_str("\n- ");
            s.push_str(c.trim());
        }
        if let Some(cue) = cue {
            s.push('\n');
            s.push_str(cue);
        }
        s
    };
    Ok(Record { input, target, choices: Some(r.choices.iter().map(|c| c.trim().to_owned()).collect()) })
}

/// Winogrande / WSC: the options differ in the noun that ends them; the question names both.
fn schema_record(r: Schema) -> Result<Record, String> {
    if r.context_options.len() < 2 {
        return Err("fewer than 2 context options".into());
    }
    let gold = r
        .context_options
        .get(r.gold)
        .ok_or_else(|| format!("gold {} of {} options", r.gold, r.context_options.len()))?;
    // The shared prefix of the options, cut back to a word boundary; each option's rest is its candidate.
    let first = &r.context_options[0];
    let mut common = first.len();
    for o in &r.context_options[1..] {
        common = common.min(first.bytes().zip(o.bytes()).take_while(|(a, b)| a == b).count());
    }
    while common > 0 && !first.is_char_boundary(common) {
        common -= 1;
    }
    let cut = first[..common].rfind(' ').map_or(0, |i| i + 1);
    let candidates: Vec<String> = r.context_options.iter().map(|o| o[cut..].trim().to_owned()).collect();
    if candidates.iter().any(String::is_empty) {
        return Err("the context options do not differ at their end".into());
    }
    let sentence = format!("{}_ {}", &first[..cut], r.continuation.trim());
    let input = format!("{sentence}\nWho or what is \"_\": {}?", candidates.join(" or "));
    Ok(Record { input, target: gold[cut..].trim().to_owned(), choices: Some(candidates) })
}

// ---------------------------------------------------------------------------------------------------------
// BIG-bench task.json

/// `target_scores`, keeping the file's key order (BIG-bench breaks ties by it).
#[derive(Debug, Default)]
struct OrderedScores(Vec<(String, f64)>);

impl<'de> Deserialize<'de> for OrderedScores {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedScores;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of choice -> score")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some((k, s)) = map.next_entry::<String, f64>()? {
                    v.push((k, s));
                }
                Ok(OrderedScores(v))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Debug, Deserialize)]
struct RawExample {
    input: String,
    #[serde(default)]
    target: Option<OneOrMany>,
    #[serde(default)]
    target_scores: Option<OrderedScores>,
}

#[derive(Debug, Deserialize)]
struct RawTask {
    examples: Vec<RawExample>,
    #[serde(default)]
    task_prefix: Option<String>,
    #[serde(default)]
    example_input_prefix: Option<String>,
    #[serde(default)]
    example_output_prefix: Option<String>,
    #[serde(default)]
    choice_prefix: Option<String>,
    #[serde(default)]
    append_choices_to_input: Option<bool>,
}

/// Composes BIG-bench's zero-shot prompt, as `bigbench/api/json_task.py` does:
///
/// ```text
/// input = task_prefix + example_input_prefix + raw_input [+ choice_prefix + choice_prefix.join(choices)]
///         + example_output_prefix
/// ```
///
/// with the defaults `""`, `"\nQ: "`, `"\nA: "`, `"\n  choice: "` for absent fields; the choices are listed
/// sorted, and only when `append_choices_to_input` (default true) holds. Without `compose`, the input is the
/// raw input with the choices appended as `"\nOptions:\n- a\n- b"` (for a phrasing template to wrap).
fn parse_bigbench(bytes: &[u8], compose: bool) -> Result<Vec<Record>, String> {
    let raw: RawTask = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let or = |v: &Option<String>, d: &str| v.clone().unwrap_or_else(|| d.to_owned());
    let (task_prefix, input_prefix, output_prefix, choice_prefix) = if compose {
        (
            or(&raw.task_prefix, ""),
            or(&raw.example_input_prefix, "\nQ: "),
            or(&raw.example_output_prefix, "\nA: "),
            or(&raw.choice_prefix, "\n  choice: "),
        )
    } else {
        (String::new(), String::new(), String::new(), "\n- ".to_owned())
    };
    let append = raw.append_choices_to_input.unwrap_or(true);
    let mut out = Vec::with_capacity(raw.examples.len());
    for (i, ex) in raw.examples.into_iter().enumerate() {
        let at = |m: &str| format!("example {i}: {m}");
        let mut input = format!("{task_prefix}{input_prefix}{}", ex.input);
        if let (Some(scores), true) = (&ex.target_scores, append) {
            let mut keys: Vec<&str> = scores.0.iter().map(|(k, _)| k.as_str()).collect();
            keys.sort_unstable();
            if !compose {
                input.push_str("\nOptions:");
            }
            for k in keys {
                input.push_str(&choice_prefix);
                input.push_str(k);
            }
        }
        input.push_str(&output_prefix);
        let target = match (ex.target, &ex.target_scores) {
            (Some(t), _) => t.first(),
            (None, Some(scores)) => best_scored(scores).map_err(|m| at(&m))?,
            (None, None) => return Err(at("neither `target` nor `target_scores`")),
        };
        let choices = ex.target_scores.as_ref().map(|s| s.0.iter().map(|(k, _)| k.clone()).collect());
        out.push(Record { input, target, choices });
    }
    Ok(out)
}

/// BIG-bench's rule: the first key with the highest score, which must beat the lowest.
fn best_scored(scores: &OrderedScores) -> Result<String, String> {
    let max = scores.0.iter().map(|(_, s)| *s).fold(f64::NEG_INFINITY, f64::max);
    let min = scores.0.iter().map(|(_, s)| *s).fold(f64::INFINITY, f64::min);
    let unusable = match scores.0.len() {
        0 => true,
        1 => max == 0.0,
        _ => max <= min,
    };
    if unusable {
        return Err("`target_scores` has no choice scored above the others".into());
    }
    scores.0.iter().find(|(_, s)| *s == max).map(|(k, _)| k.clone()).ok_or_else(|| "no best choice".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bigbench_compose_uses_defaults_and_choices() {
        let t = r#"{"examples":[{"input":"x","target_scores":{"b":0,"a":1,"c":1}}]}"#;
        let r = parse(Format::BigbenchTask, t.as_bytes(), true).expect("parse");
        assert_eq!(r[0].input, "\nQ: x\n  choice: a\n  choice: b\n  choice: c\nA: ");
        assert_eq!(r[0].target, "a", "first best-scored key in file order");
        assert_eq!(r[0].choices.as_deref(), Some(&["b".to_owned(), "a".to_owned(), "c".to_owned()][..]));
        let r = parse(Format::BigbenchTask, t.as_bytes(), false).expect("parse");
        assert_eq!(r[0].input, "x\nOptions:\n- a\n- b\n- c", "raw input for a template");
    }

    #[test]
    fn bigbench_target_scores_without_winner_is_rejected() {
        let t = r#"{"examples":[{"input":"x","target_scores":{"a":0,"b":0}}]}"#;
        let err = parse(Format::BigbenchTask, t.as_bytes(), true).expect_err("no winner");
        assert!(err.starts_with("example 0:"), "{err}");
    }

    #[test]
    fn induction_keeps_file_order_and_the_first_output() {
        let t = r#"{"metadata":{},"examples":{"2":{"input":"b","output":["B","bb"]},"1":{"input":"a","output":"A"}}}"#;
        let r = parse(Format::InductionExamples, t.as_bytes(), false).expect("parse");
        assert_eq!(r, vec![plain("b".into(), "B".into()), plain("a".into(), "A".into())]);
    }

    #[test]
    fn foundry_choice_lists_options_unless_the_query_has_them() {
        let lines = concat!(
            r#"{"query": "Q: sky?\nA. red\nB. blue\nAnswer:", "choices": ["A", "B"], "gold": 1}"#,
            "\n",
            r#"{"query": "Question: sky?\nAnswer:", "choices": ["red ", "blue"], "gold": 1}"#,
            "\n",
            r#"{"query": "Is it blue?", "choices": ["no", "yes"], "gold": 1}"#,
            "\n"
        );
        let r = parse(Format::FoundryChoice, lines.as_bytes(), false).expect("parse");
        assert_eq!(r[0].input, "Q: sky?\nA. red\nB. blue\nAnswer:");
        assert_eq!(r[0].target, "B");
        assert_eq!(r[1].input, "Question: sky?\nOptions:\n- red\n- blue\nAnswer:", "the answer cue stays last");
        assert_eq!(r[1].target, "blue");
        assert_eq!(r[2].input, "Is it blue?\nOptions:\n- no\n- yes");
        let bad = r#"{"query": "q", "choices": ["a"], "gold": 3}"#;
        let err = parse(Format::FoundryChoice, bad.as_bytes(), false).expect_err("gold out of range");
        assert!(err.starts_with("line 1:"), "{err}");
    }

    #[test]
    fn foundry_schema_asks_for_the_blank() {
        let line = r#"{"context_options": ["Sarah was better than Maria so Sarah", "Sarah was better than Maria so Maria"], "continuation": "got the easy cases.", "gold": 1}"#;
        let r = parse(Format::FoundrySchema, line.as_bytes(), false).expect("parse");
        assert_eq!(
            r[0].input,
            "Sarah was better than Maria so _ got the easy cases.\nWho or what is \"_\": Sarah or Maria?"
        );
        assert_eq!(r[0].target, "Maria");
    }

    #[test]
    fn gzipped_files_are_bounded_and_checked() {
        let f =
            DataFile { path: "x".into(), bytes: Cow::Owned(b"not gzip".to_vec()), gzipped: true, role: FileRole::Any };
        assert!(f.contents().expect_err("bad gzip").contains("gzip"));
    }
}
