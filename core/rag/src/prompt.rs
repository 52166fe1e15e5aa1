//! Prompt assembly: retrieved chunks become numbered sources in the prompt,
//! and the same numbers come back as citations.

use crate::collection::SearchHit;
use serde::Serialize;

/// A numbered source of an answer.
#[derive(Debug, Clone, Serialize)]
pub struct Citation {
    /// Its number in the prompt (`[1]` …).
    pub number: usize,
    /// Document id.
    pub doc_id: String,
    /// Source path.
    pub source: String,
    /// Byte span in the document text.
    pub span: (usize, usize),
    /// Retrieval score.
    pub score: f32,
}

/// Most characters of one source quoted into the prompt.
const MAX_SOURCE_CHARS: usize = 1200;

/// The user message for a grounded answer, and its citations.
pub fn assemble(question: &str, hits: &[SearchHit]) -> (String, Vec<Citation>) {
    let mut prompt =
        String::from("Answer the question using only the sources below. Cite the sources you use as [1], [2].\n\n");
    let mut citations = Vec::new();
    for (i, hit) in hits.iter().enumerate() {
        let text: String = hit.text.chars().take(MAX_SOURCE_CHARS).collect();
        prompt.push_str(&format!("[{}] {}\n\n", i + 1, text.trim()));
        citations.push(Citation {
            number: i + 1,
            doc_id: hit.doc_id.clone(),
            source: hit.source.clone(),
            span: hit.span,
            score: hit.score,
        });
    }
    prompt.push_str(&format!("Question: {question}"));
    (prompt, citations)
}
