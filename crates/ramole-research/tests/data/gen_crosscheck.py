"""Regenerates crosscheck.json: reference outputs of sacrebleu and rouge-score.

Run with sacrebleu and rouge-score installed (the fixture in this directory was
made with sacrebleu 2.6.0 and rouge-score 0.1.2 on Python 3.11):

    python3 -m venv /tmp/mvenv && /tmp/mvenv/bin/pip install sacrebleu==2.6.0 rouge-score==0.1.2
    /tmp/mvenv/bin/python gen_crosscheck.py > crosscheck.json

Each case records, for one prediction and a list of targets:
- `tok13a`: sacrebleu's 13a tokenisation of the prediction (after `rstrip`, as BLEU does);
- `bleu`: `sacrebleu.sentence_bleu(prediction, targets).score / 100` (defaults:
  13a, mixed case, smooth_method='exp', use_effective_order=True), with its
  sufficient statistics;
- `rouge`: `RougeScorer(['rouge1','rouge2','rougeL'], use_stemmer=False)
  .score_multi(targets, prediction)` precision/recall/fmeasure;
- `rouge_tokens`: rouge-score's default tokenisation of the prediction.
"""
import json
import random
import sys

import sacrebleu
from rouge_score import rouge_scorer, tokenizers

HAND = [
    ("The dog bit the man.", ["The dog bit the man."]),
    ("It wasn't surprising.", ["It was not unexpected.", "No one was surprised."]),
    ("The man had just bitten him.", ["The man bit him first.", "The man had bitten the dog."]),
    ("the cat sat on the mat", ["the cat is on the mat", "there is a cat on the mat"]),
    ("3.5 million people, i.e. 3,500,000", ["About 3.5 million people (3,500,000)."]),
    ("pages 10-20 and 1990-2000", ["pages 10 - 20, years 1990-2000"]),
    ("&quot;Hello&quot; &amp;lt; world &gt; you", ["\"Hello\" < world > you"]),
    ("line one-\nline two\nline three", ["line oneline two line three"]),
    ("foo <skipped> bar", ["foo bar"]),
    ("U.S.A. vs. U.K.", ["USA vs UK"]),
    ("Producția de zahăr primă va fi exprimată în ceea ce privește zahărul alb;",
     ["producţia de zahăr brut se exprimă în zahăr alb;"]),
    ("İstanbul KELVIN \u212a straße", ["istanbul kelvin k strasse"]),
    ("tab\tsep\u00a0nbsp\u3000ideo\x1cfs end", ["tab sep nbsp ideo fs end"]),
    ("emoji 😀 test 😀!", ["emoji test !"]),
    ("a . b , c .d ,e 1.2 3,4 .5 6.", ["a. b, c.d,e 1.2 3,4 .5 6."]),
    ("", ["something"]),
    ("something", [""]),
    ("   ", ["   "]),
    ("...", ["..."]),
    ("?!", ["?!"]),
    ("yes", ["no", "yes", "maybe"]),
    ("a a a a a a", ["a a", "a a a"]),
    ("word", ["word word", "a b c word d e f"]),
    ("trailing whitespace   \n", ["trailing whitespace"]),
    ("dash at end-\n", ["dash at end-"]),
    ("x-\ny", ["xy"]),
    ("{curly} [square] `tick` ~tilde^ @at #hash $dollar %pct ^caret *star +plus =eq |bar \\back /slash",
     ["curly square tick tilde at hash dollar pct caret star plus eq bar back slash"]),
    ("'quoted' \"double\" (paren) <angle>", ["quoted double paren angle"]),
]

WORDS = ("the a of to and in is was it for on with as by at from that this be are an or not "
         "cat dog man mat house river 42 3.5 1,000 10-20 U.S. e.g. can't won't New-York "
         "Zürich naïve café İ \u212a ß Ωmega 東京 😀 &amp; &quot; &lt; <skipped>").split()
PUNCT = [".", ",", "!", "?", ";", ":", "'", "\"", "(", ")", "-", "--", "...", "/", "&", "$", "%"]
SPACES = [" ", " ", " ", " ", "  ", "\t", "\n", "-\n", "\u00a0", "\u3000", "\x1c", "\r"]


def sentence(rng, n):
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.8:
            w = rng.choice(WORDS)
            if rng.random() < 0.15:
                w = w.capitalize() if rng.random() < 0.5 else w.upper()
            out.append(w)
        else:
            out.append(rng.choice(PUNCT))
    text = ""
    for i, w in enumerate(out):
        if i:
            text += rng.choice(SPACES) if rng.random() < 0.9 else ""
        text += w
    return text


def mutate(rng, text):
    toks = text.split(" ")
    for _ in range(rng.randint(0, 4)):
        op = rng.random()
        if op < 0.3 and len(toks) > 1:
            toks.pop(rng.randrange(len(toks)))
        elif op < 0.6:
            toks.insert(rng.randrange(len(toks) + 1), rng.choice(WORDS))
        elif op < 0.8 and len(toks) > 1:
            i, j = rng.randrange(len(toks)), rng.randrange(len(toks))
            toks[i], toks[j] = toks[j], toks[i]
        else:
            i = rng.randrange(len(toks))
            toks[i] = toks[i].lower()
    return " ".join(toks)


def main():
    rng = random.Random(20240611)
    cases = list(HAND)
    for _ in range(300):
        ref = sentence(rng, rng.randint(0, 25))
        refs = [ref] + [mutate(rng, ref) for _ in range(rng.choice([0, 0, 1, 2]))]
        pred = mutate(rng, ref) if rng.random() < 0.85 else sentence(rng, rng.randint(0, 25))
        cases.append((pred, refs))

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    tok = tokenizers.DefaultTokenizer(use_stemmer=False)
    bleu_metric = sacrebleu.metrics.BLEU(effective_order=True)
    out = []
    for pred, refs in cases:
        b = sacrebleu.sentence_bleu(pred, refs)
        r = scorer.score_multi(refs, pred)
        out.append({
            "prediction": pred,
            "targets": refs,
            "tok13a": bleu_metric._preprocess_segment(pred),
            "bleu": b.score / 100.0,
            "bleu_stats": {"hyp_len": b.sys_len, "ref_len": b.ref_len,
                           "correct": list(b.counts), "total": list(b.totals)},
            "rouge": {k: [r[k].precision, r[k].recall, r[k].fmeasure]
                      for k in ("rouge1", "rouge2", "rougeL")},
            "rouge_tokens": tok.tokenize(pred),
        })
    json.dump({"sacrebleu": sacrebleu.__version__, "rouge_score": "0.1.2", "cases": out},
              sys.stdout, ensure_ascii=True, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
