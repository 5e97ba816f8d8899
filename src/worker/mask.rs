//! Masking secrets in a phase's output: every secret value, plain and in the forms a
//! program commonly prints it (base64, base64url, hex, percent-encoded), becomes `***`,
//! also when it arrives in pieces (`StreamMasker` holds back a possible beginning).
//!
//! Base64 of a secret that is part of a longer encoded text depends on where the secret
//! starts relative to the encoder's 3-byte groups, so each of the three alignments is a
//! form of its own: the characters that depend on the secret's bytes only (the first and
//! last may mix in the neighbours' bits and are left out). Encoded forms shorter than
//! `MIN_ENCODED` characters are not masked: they would hide unrelated text everywhere.

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_encode};

/// What replaces a secret.
pub const MASK: &str = "***";

/// The shortest encoded form that is masked.
const MIN_ENCODED: usize = 4;

/// Percent-encoding that keeps RFC 3986's unreserved characters (`-._~`), as most URL
/// libraries do.
const URL_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encoding as JavaScript's `encodeURIComponent` does it.
const URI_COMPONENT: &AsciiSet = &URL_UNRESERVED.remove(b'!').remove(b'*').remove(b'\'').remove(b'(').remove(b')');

/// The set of secrets to mask, compiled once; `stream` gives each output its own state.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    /// Every form of every secret; `None` when there is no secret.
    forms: Option<AhoCorasick>,
    /// The longest form, in bytes: a match is never longer.
    longest: usize,
    /// No form contains a newline, so no match spans one: what ends with a newline can be
    /// masked and let go at once.
    lines_are_safe: bool,
}

impl Masker {
    /// Masks `secrets` (empty ones are ignored) in all their forms.
    pub fn new<S: AsRef<str>>(secrets: &[S]) -> Masker {
        let mut forms: Vec<Vec<u8>> =
            secrets.iter().map(|s| s.as_ref().as_bytes()).filter(|s| !s.is_empty()).flat_map(forms_of).collect();
        forms.sort();
        forms.dedup();
        if forms.is_empty() {
            return Masker { forms: None, longest: 0, lines_are_safe: true };
        }
        let longest = forms.iter().map(Vec::len).max().unwrap_or(0);
        let lines_are_safe = !forms.iter().any(|form| form.contains(&b'\n'));
        // Standard semantics report overlapping matches, so one secret inside another, or
        // two that overlap, leave no part of either showing.
        let forms = AhoCorasick::builder().match_kind(MatchKind::Standard).build(&forms).ok();
        Masker { forms, longest, lines_are_safe }
    }

    /// Whether there is anything to mask.
    pub fn is_empty(&self) -> bool {
        self.forms.is_none()
    }

    /// `text` with every byte that is part of a form of a secret covered by a mask.
    pub fn mask(&self, text: &str) -> String {
        let mut out = Vec::with_capacity(text.len());
        self.mask_into(text.as_bytes(), text.len(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// `value` with every string in it, and every object key, masked.
    pub fn mask_json(&self, value: &mut serde_json::Value) {
        if self.is_empty() {
            return;
        }
        match value {
            serde_json::Value::String(text) => *text = self.mask(text),
            serde_json::Value::Array(items) => items.iter_mut().for_each(|item| self.mask_json(item)),
            serde_json::Value::Object(map) => self.mask_map(map),
            _ => {}
        }
    }

    /// `map` with every key and every string in its values masked.
    pub fn mask_map(&self, map: &mut serde_json::Map<String, serde_json::Value>) {
        if self.is_empty() {
            return;
        }
        *map = std::mem::take(map)
            .into_iter()
            .map(|(key, mut value)| {
                self.mask_json(&mut value);
                (self.mask(&key), value)
            })
            .collect();
    }

    /// A masker for one stream of output.
    pub fn stream(&self) -> StreamMasker<'_> {
        self.resume(Vec::new())
    }

    /// A stream that goes on from what an earlier one held back (`StreamMasker::into_held`),
    /// e.g. across two requests.
    pub fn resume(&self, held: Vec<u8>) -> StreamMasker<'_> {
        StreamMasker { masker: self, held }
    }

    /// The matches in `bytes`, merged into sorted ranges that neither overlap nor touch.
    fn ranges(&self, bytes: &[u8]) -> Vec<(usize, usize)> {
        let Some(forms) = &self.forms else { return Vec::new() };
        let mut ranges: Vec<(usize, usize)> =
            forms.find_overlapping_iter(bytes).map(|found| (found.start(), found.end())).collect();
        ranges.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged
    }

    /// Appends `bytes[..upto]` to `out`, masked, and returns where it stopped: before
    /// `upto` when a match crosses it, so that the match is masked whole later.
    fn mask_into(&self, bytes: &[u8], upto: usize, out: &mut Vec<u8>) -> usize {
        let mut shown = 0;
        for (start, end) in self.ranges(bytes) {
            if start >= upto {
                break;
            }
            if end > upto {
                out.extend_from_slice(&bytes[shown..start]);
                return start;
            }
            out.extend_from_slice(&bytes[shown..start]);
            out.extend_from_slice(MASK.as_bytes());
            shown = end;
        }
        out.extend_from_slice(&bytes[shown..upto]);
        upto
    }
}

/// The masking state of one stream: the bytes that may still be the beginning of a
/// secret are held back until more output shows whether they are, or the stream ends.
#[derive(Debug)]
pub struct StreamMasker<'a> {
    masker: &'a Masker,
    held: Vec<u8>,
}

impl StreamMasker<'_> {
    /// Takes the next piece of output and appends to `out` what can be shown, masked.
    pub fn push(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        self.held.extend_from_slice(piece);
        // A match not seen whole yet starts in the last `longest - 1` bytes, and, when no
        // form holds a newline, after the last newline.
        let mut upto = self.held.len().saturating_sub(self.masker.longest.saturating_sub(1));
        if self.masker.lines_are_safe
            && let Some(newline) = self.held.iter().rposition(|&b| b == b'\n')
        {
            upto = upto.max(newline + 1);
        }
        let shown = self.masker.mask_into(&self.held, upto, out);
        self.held.drain(..shown);
    }

    /// What is held back, for `Masker::resume`.
    pub fn into_held(self) -> Vec<u8> {
        self.held
    }

    /// The stream ended: appends the rest, masked.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let held = std::mem::take(&mut self.held);
        self.masker.mask_into(&held, held.len(), out);
    }
}

/// Every form of one secret that is masked.
fn forms_of(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut encoded: Vec<Vec<u8>> = Vec::new();
    for (padded, unpadded) in [(&STANDARD, &STANDARD_NO_PAD), (&URL_SAFE, &URL_SAFE_NO_PAD)] {
        encoded.push(padded.encode(secret).into_bytes());
        for offset in 0..3 {
            encoded.push(aligned_base64(unpadded, secret, offset));
        }
    }
    encoded.push(hex::encode(secret).into_bytes());
    encoded.push(hex::encode_upper(secret).into_bytes());
    for set in [NON_ALPHANUMERIC, URL_UNRESERVED, URI_COMPONENT] {
        // Escapes in either case, a space as `%20` or (form encoding) `+`.
        let upper = percent_encode(secret, set).to_string();
        for escaped in [lowercase_escapes(&upper), upper] {
            encoded.push(escaped.replace("%20", "+").into_bytes());
            encoded.push(escaped.into_bytes());
        }
    }
    encoded.retain(|form| form.len() >= MIN_ENCODED && form.as_slice() != secret);
    encoded.push(secret.to_vec());
    encoded
}

/// The base64 characters that depend on `secret` alone when it starts `offset` bytes
/// into a 3-byte group.
fn aligned_base64(engine: &impl base64::Engine, secret: &[u8], offset: usize) -> Vec<u8> {
    let mut input = vec![0; offset];
    input.extend_from_slice(secret);
    let text = engine.encode(&input).into_bytes();
    // Character i holds bits [6i, 6i + 6); the secret's are [8 * offset, 8 * (offset + n)).
    let first = (8 * offset).div_ceil(6);
    let end = (8 * (offset + secret.len()) / 6).min(text.len());
    text.get(first..end).map(<[u8]>::to_vec).unwrap_or_default()
}

/// `%2F` written `%2f`.
fn lowercase_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut after_percent = 0;
    for c in text.chars() {
        if c == '%' {
            after_percent = 2;
            out.push(c);
        } else if after_percent > 0 {
            after_percent -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_mask(secrets: &[&str], line: &str, expected: &str) {
        assert_eq!(Masker::new(secrets).mask(line), expected);
    }

    /// What a stream's pieces read as once masked.
    fn streamed(masker: &Masker, pieces: &[&[u8]]) -> String {
        let mut stream = masker.stream();
        let mut out = Vec::new();
        for piece in pieces {
            stream.push(piece, &mut out);
        }
        stream.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn masks_every_occurrence_of_every_secret() {
        check_mask(&["abc"], "abc abc-abc", "*** ***-***");
        check_mask(&["abc", "abcdef"], "x abcdef abc", "x *** ***");
        check_mask(&["abcd", "cdef"], "abcdef!", "***!");
        check_mask(&["aa"], "aaa", "***");
        check_mask(&[""], "nothing here", "nothing here");
        check_mask(&["é"], "café é", "caf*** ***");
    }

    #[test]
    fn masks_the_encoded_forms() {
        let secret = "s3cr/t+v@lue z!";
        let masker = Masker::new(&[secret]);
        let forms = [
            STANDARD.encode(secret),
            URL_SAFE.encode(secret),
            STANDARD_NO_PAD.encode(secret),
            hex::encode(secret),
            hex::encode_upper(secret),
            "s3cr%2Ft%2Bv%40lue%20z%21".to_string(),
            "s3cr%2ft%2bv%40lue+z!".to_string(),
            "s3cr%2Ft%2Bv%40lue%20z!".to_string(),
        ];
        for form in forms {
            let masked = masker.mask(&format!("token={form};"));
            assert_eq!(masked, "token=***;", "{form}");
        }
    }

    #[test]
    fn masks_base64_of_a_secret_inside_longer_text_at_every_alignment() {
        let secret = "correct-horse-battery";
        let masker = Masker::new(&[secret]);
        for prefix in ["", "a", "ab", "abc", "user:"] {
            let text = format!("{prefix}{secret}:and more");
            for engine in [&STANDARD, &URL_SAFE] {
                let encoded = engine.encode(&text);
                let masked = masker.mask(&encoded);
                assert!(masked.contains(MASK), "{prefix:?}: {encoded} -> {masked}");
                // At most one character on each side mixes in a neighbour's bits.
                let shown = masked.replace(MASK, "");
                assert!(shown.len() <= encoded.len() - 4 * secret.len() / 3 + 2, "{prefix:?}: {masked}");
            }
        }
    }

    #[test]
    fn a_secret_split_across_pieces_is_masked() {
        let masker = Masker::new(&["hunter22", "multi\nline"]);
        assert_eq!(streamed(&masker, &[b"pw=hun", b"ter22\n"]), "pw=***\n");
        assert_eq!(streamed(&masker, &[b"h", b"u", b"n", b"t", b"e", b"r", b"2", b"2"]), "***");
        assert_eq!(streamed(&masker, &[b"a multi\n", b"line b\n"]), "a *** b\n");
        let encoded = hex::encode("hunter22");
        let (one, two) = encoded.split_at(5);
        assert_eq!(streamed(&masker, &[b"x", one.as_bytes(), two.as_bytes(), b"y\n"]), "x***y\n");
    }

    #[test]
    fn a_stream_goes_on_from_what_it_held_back() {
        let masker = Masker::new(&["multi\nline"]);
        let mut out = Vec::new();
        let mut stream = masker.stream();
        stream.push(b"a multi\n", &mut out);
        let held = stream.into_held();
        let mut stream = masker.resume(held);
        stream.push(b"line b\n", &mut out);
        stream.finish(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "a *** b\n");
    }

    #[test]
    fn a_stream_holds_back_only_what_may_be_a_secret() {
        let masker = Masker::new(&["hunter22"]);
        let mut stream = masker.stream();
        let mut out = Vec::new();
        stream.push(b"done\nnext hun", &mut out);
        // A finished line goes out at once; the rest may still become a secret.
        assert_eq!(out, b"done\n");
        stream.push(b"dreds\n", &mut out);
        assert_eq!(out, b"done\nnext hundreds\n");
        let none = Masker::new::<&str>(&[]);
        let mut stream = none.stream();
        let mut out = Vec::new();
        stream.push(b"partial", &mut out);
        assert_eq!(out, b"partial");
    }

    #[test]
    fn json_is_masked_in_every_string_and_key_and_nothing_else() {
        let masker = Masker::new(&["hunter22"]);
        let mut value = serde_json::json!({
            "note": "pw hunter22",
            "hunter22": [1, "aHVudGVyMjI=", {"deep": "x hunter22 y"}],
            "count": 22,
        });
        masker.mask_json(&mut value);
        assert_eq!(value, serde_json::json!({"note": "pw ***", "***": [1, "***", {"deep": "x *** y"}], "count": 22}));
    }

    #[test]
    fn short_encoded_forms_are_not_masked() {
        // The hex of "ab" is "6162": four characters, masked; its base64 fragments are shorter.
        let masker = Masker::new(&["ab"]);
        assert_eq!(masker.mask("6162 YW Yg ab"), "*** YW Yg ***");
    }
}
