//! The "contained answer" metric: an output is right when it contains the expected short
//! answer, ignoring case and runs of whitespace. `ftlab eval` (held-out SFT answers) and the
//! RAG evaluation both score with it.

fn normalise(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Whether `output` contains `expected`, ignoring case and runs of whitespace.
pub fn contains_answer(output: &str, expected: &str) -> bool {
    normalise(output).contains(&normalise(expected))
}

#[cfg(test)]
mod tests {
    #[test]
    fn containment_ignores_case_and_whitespace() {
        assert!(super::contains_answer(
            "It closes at 4  P.M. today",
            "4 p.m."
        ));
        assert!(super::contains_answer(
            "文脈には記載がありません。",
            "文脈には記載がありません。"
        ));
        assert!(!super::contains_answer("It closes at 5 p.m.", "4 p.m."));
    }
}
