//! Generated tokens to text, a piece at a time: stop strings cut the answer, and text that could be the
//! start of a stop string (or half a UTF-8 character) is held back until it is known.

use std::sync::Arc;

use tokenizers::Tokenizer;

/// The text of one answer as its tokens arrive.
#[derive(Debug)]
pub(crate) struct TextStream {
    tokenizer: Arc<Tokenizer>,
    eos: Arc<[u32]>,
    stops: Vec<String>,
    ids: Vec<u32>,
    /// Bytes of the text already handed out.
    sent: usize,
    text: String,
    stopped: bool,
}

impl TextStream {
    pub(crate) fn new(tokenizer: Arc<Tokenizer>, eos: Arc<[u32]>, stops: Vec<String>) -> Self {
        Self { tokenizer, eos, stops, ids: Vec::new(), sent: 0, text: String::new(), stopped: false }
    }

    /// Adds a token; returns the text that is now certain (possibly empty). After a stop string the
    /// answer is over: [`Self::stopped`] says so and later tokens are ignored.
    pub(crate) fn push(&mut self, token: u32) -> String {
        if self.stopped || self.eos.contains(&token) {
            return String::new();
        }
        self.ids.push(token);
        let Ok(text) = self.tokenizer.decode(&self.ids, true) else { return String::new() };
        self.text = text;
        if let Some(at) = self.stops.iter().filter_map(|s| self.text.find(s.as_str())).min() {
            self.text.truncate(at);
            self.stopped = true;
            return self.take(self.text.len());
        }
        // Hold back a trailing replacement character (half a character) and what could begin a stop.
        let mut end = self.text.len();
        if self.text.ends_with('\u{FFFD}') {
            end -= '\u{FFFD}'.len_utf8();
        }
        let hold = self.stops.iter().map(|s| s.len().saturating_sub(1)).max().unwrap_or(0);
        end = end.saturating_sub(hold).max(self.sent);
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        self.take(end)
    }

    /// The rest of the text, once the answer is over. An answer cut in the middle of a character (by
    /// `max_tokens`) ends before it: the half character's bytes decode to replacement characters, which are
    /// not the model's text.
    pub(crate) fn finish(&mut self) -> String {
        // (A cut sequence decodes to one replacement character, whatever its length.)
        if self.text.len() > self.sent && self.text.ends_with('\u{FFFD}') && self.ends_mid_character() {
            self.text.truncate(self.text.len() - '\u{FFFD}'.len_utf8());
        }
        self.take(self.text.len())
    }

    /// Whether the last token's bytes are an incomplete UTF-8 sequence (decoded as a replacement character).
    fn ends_mid_character(&self) -> bool {
        let Some(&last) = self.ids.last() else { return false };
        self.tokenizer.decode(&[last], true).is_ok_and(|t| t == "\u{FFFD}")
    }

    /// Whether a stop string ended the answer.
    pub(crate) fn stopped(&self) -> bool {
        self.stopped
    }

    /// The whole answer so far.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// Tokens that count as the answer's (end of sequence excluded).
    pub(crate) fn tokens(&self) -> usize {
        self.ids.len()
    }

    fn take(&mut self, end: usize) -> String {
        if end <= self.sent || end > self.text.len() {
            return String::new();
        }
        let piece = self.text[self.sent..end].to_string();
        self.sent = end;
        piece
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> TextStream {
        let tokenizer: Tokenizer = ramole_testkit::byte_tokenizer_json().parse().expect("tokenizer");
        TextStream::new(Arc::new(tokenizer), Arc::from([2u32]), Vec::new())
    }

    /// One token per byte: `é` is two tokens.
    fn ids(tok: &TextStream, text: &str) -> Vec<u32> {
        tok.tokenizer.encode(text, false).expect("encode").get_ids().to_vec()
    }

    /// Issue 25, 9: an answer cut in the middle of a character ends before it, not with "\u{FFFD}".
    #[test]
    fn an_answer_cut_mid_character_ends_before_it() {
        let mut s = stream();
        let e = ids(&s, "café");
        assert_eq!(e.len(), 5, "é is two bytes");
        let mut out = String::new();
        for &t in &e[..4] {
            out += &s.push(t);
        }
        out += &s.finish();
        assert_eq!(out, "caf");
        assert_eq!(s.text(), "caf");
        let mut whole = stream();
        let text: String = e.iter().map(|&t| whole.push(t)).collect::<String>() + &whole.finish();
        assert_eq!(text, "café", "a whole character is kept");
    }
}
