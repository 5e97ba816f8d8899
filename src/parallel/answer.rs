//! An agent's answer (`$NIGHTSHIFT_ANSWER`): the bytes it wrote, checked against the kind
//! of answer its run asked for and turned into an `Answer`, or a reason naming what is
//! wrong. Pure: the worker reads the file (bounded) and fails the run on an error.
//!
//! The answer is data, never instructions: strict JSON of one exact shape (no other
//! field, no trailing text), a winner among the candidates it was given, and every text
//! bounded, so what reaches the parent's record and the next prompt is small and known.

use serde::Deserialize;

use super::{Answer, AnswerKind};

/// The most bytes an answer file may hold.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The most findings a verdict may list.
pub const MAX_FINDINGS: usize = 50;
/// The most characters of one finding, or of a pick's reason.
pub const MAX_TEXT_CHARS: usize = 4000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerdictFile {
    verdict: String,
    #[serde(default)]
    findings: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PickFile {
    winner: u32,
    reason: String,
}

/// The answer in `bytes`, of `kind`.
pub fn parse(kind: &AnswerKind, bytes: &[u8]) -> Result<Answer, String> {
    if bytes.len() > MAX_ANSWER_BYTES {
        return Err(format!("the answer holds {} bytes, more than the {MAX_ANSWER_BYTES} allowed", bytes.len()));
    }
    match kind {
        AnswerKind::Verdict => {
            let file: VerdictFile = strict(bytes, r#"{"verdict": "pass" | "fail", "findings": ["..."]}"#)?;
            let pass = match file.verdict.as_str() {
                "pass" => true,
                "fail" => false,
                other => return Err(format!("`verdict` must be \"pass\" or \"fail\", not {other:?}")),
            };
            if file.findings.len() > MAX_FINDINGS {
                return Err(format!("`findings` lists {}, more than the {MAX_FINDINGS} allowed", file.findings.len()));
            }
            for (index, finding) in file.findings.iter().enumerate() {
                bounded_text(&format!("`findings[{index}]`"), finding)?;
            }
            if !pass && file.findings.is_empty() {
                return Err("a \"fail\" verdict must list its `findings`".to_string());
            }
            Ok(Answer::Verdict { pass, findings: file.findings })
        }
        AnswerKind::Pick { candidates } => {
            let file: PickFile = strict(bytes, r#"{"winner": N, "reason": "..."}"#)?;
            if !candidates.contains(&file.winner) {
                let listed: Vec<String> = candidates.iter().map(u32::to_string).collect();
                return Err(format!("`winner` {} is not one of the candidates ({})", file.winner, listed.join(", ")));
            }
            bounded_text("`reason`", &file.reason)?;
            Ok(Answer::Pick { winner: file.winner, reason: file.reason })
        }
    }
}

/// `bytes` as exactly one JSON object of the shape `T`, which `shape` shows.
fn strict<'a, T: Deserialize<'a>>(bytes: &'a [u8], shape: &str) -> Result<T, String> {
    // A derived struct also reads from a JSON array (its fields in order): only an object
    // names what each value is.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(format!("the answer is not {shape}: it must be a JSON object"));
    }
    serde_json::from_slice(bytes).map_err(|error| format!("the answer is not {shape}: {error}"))
}

/// A text that says something, within `MAX_TEXT_CHARS`.
fn bounded_text(what: &str, text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err(format!("{what} is empty"));
    }
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(format!("{what} holds {chars} characters, more than the {MAX_TEXT_CHARS} allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(candidates: &[u32]) -> AnswerKind {
        AnswerKind::Pick { candidates: candidates.to_vec() }
    }

    fn check(kind: &AnswerKind, text: &str, expected: Result<Answer, &str>) {
        let got = parse(kind, text.as_bytes());
        match (got, expected) {
            (Ok(got), Ok(expected)) => assert_eq!(got, expected, "{text}"),
            (Err(got), Err(part)) => assert!(got.contains(part), "{text}: {got:?} should say {part:?}"),
            (got, expected) => panic!("{text}: got {got:?}, expected {expected:?}"),
        }
    }

    fn verdict(pass: bool, findings: &[&str]) -> Result<Answer, &'static str> {
        Ok(Answer::Verdict { pass, findings: findings.iter().map(|f| f.to_string()).collect() })
    }

    #[test]
    fn verdicts() {
        let kind = AnswerKind::Verdict;
        check(&kind, r#"{"verdict": "pass"}"#, verdict(true, &[]));
        check(&kind, r#"{"verdict": "pass", "findings": ["nit: a name"]}"#, verdict(true, &["nit: a name"]));
        check(&kind, r#" {"verdict":"fail","findings":["tests fail"]} "#, verdict(false, &["tests fail"]));
        check(&kind, r#"{"verdict": "fail"}"#, Err("must list its `findings`"));
        check(&kind, r#"{"verdict": "fail", "findings": []}"#, Err("must list its `findings`"));
        check(&kind, r#"{"verdict": "PASS"}"#, Err(r#"not "PASS""#));
        check(&kind, r#"{"verdict": true}"#, Err("not {\"verdict\""));
        check(&kind, r#"{"findings": ["x"]}"#, Err("missing field `verdict`"));
        check(&kind, r#"{"verdict": "pass", "then": "rm -rf /"}"#, Err("unknown field `then`"));
        check(&kind, r#"{"verdict": "pass", "verdict": "fail"}"#, Err("duplicate field"));
        check(&kind, r#"{"verdict": "pass"} and more"#, Err("trailing characters"));
        check(&kind, r#"["pass"]"#, Err("is not"));
        check(&kind, "", Err("must be a JSON object"));
        check(&kind, r#"["fail", ["x"]]"#, Err("must be a JSON object"));
        check(&kind, r#"{"verdict": "pass""#, Err("EOF"));
        check(&kind, r#"{"verdict": "fail", "findings": ["ok", " "]}"#, Err("`findings[1]` is empty"));
    }

    #[test]
    fn picks() {
        let kind = pick(&[1, 3]);
        let winner = |winner, reason: &str| Ok(Answer::Pick { winner, reason: reason.to_string() });
        check(&kind, r#"{"winner": 3, "reason": "smaller"}"#, winner(3, "smaller"));
        check(&kind, r#"{"winner": 1, "reason": "clearer"}"#, winner(1, "clearer"));
        check(&kind, r#"{"winner": 2, "reason": "x"}"#, Err("`winner` 2 is not one of the candidates (1, 3)"));
        check(&kind, r#"{"winner": 0, "reason": "x"}"#, Err("not one of the candidates"));
        check(&kind, r#"{"winner": -1, "reason": "x"}"#, Err("is not"));
        check(&kind, r#"{"winner": "3", "reason": "x"}"#, Err("is not"));
        check(&kind, r#"{"winner": 3}"#, Err("missing field `reason`"));
        check(&kind, r#"{"winner": 3, "reason": ""}"#, Err("`reason` is empty"));
        check(&kind, r#"{"winner": 3, "reason": "x", "also": 1}"#, Err("unknown field `also`"));
        check(&pick(&[]), r#"{"winner": 1, "reason": "x"}"#, Err("not one of the candidates ()"));
    }

    #[test]
    fn sizes_are_bounded() {
        // Exactly at each bound is accepted; one over is refused with the bound named.
        let at_bound = "é".repeat(MAX_TEXT_CHARS);
        let answer = format!(r#"{{"winner": 1, "reason": "{at_bound}"}}"#);
        assert!(parse(&pick(&[1]), answer.as_bytes()).is_ok());
        let over = format!(r#"{{"winner": 1, "reason": "{at_bound}x"}}"#);
        let refused = parse(&pick(&[1]), over.as_bytes()).unwrap_err();
        assert!(refused.contains(&format!("{} characters, more than the {MAX_TEXT_CHARS}", MAX_TEXT_CHARS + 1)));

        let findings = |n: usize| {
            let list: Vec<String> = (0..n).map(|i| format!("\"finding {i}\"")).collect();
            format!(r#"{{"verdict": "fail", "findings": [{}]}}"#, list.join(","))
        };
        assert!(parse(&AnswerKind::Verdict, findings(MAX_FINDINGS).as_bytes()).is_ok());
        let refused = parse(&AnswerKind::Verdict, findings(MAX_FINDINGS + 1).as_bytes()).unwrap_err();
        assert!(refused.contains(&format!("lists {}, more than the {MAX_FINDINGS}", MAX_FINDINGS + 1)), "{refused}");

        let padded = |len: usize| {
            let mut text = br#"{"verdict": "pass"}"#.to_vec();
            text.resize(len, b' ');
            text
        };
        assert!(parse(&AnswerKind::Verdict, &padded(MAX_ANSWER_BYTES)).is_ok());
        let refused = parse(&AnswerKind::Verdict, &padded(MAX_ANSWER_BYTES + 1)).unwrap_err();
        assert!(refused.contains(&format!("{} bytes, more than the {MAX_ANSWER_BYTES}", MAX_ANSWER_BYTES + 1)));
    }
}
