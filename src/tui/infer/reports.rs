//! What the inference thread reports about the job being streamed: status lines, retrieved
//! chunks, tokens, the end (with its speed) or a failure.
use std::time::Instant;

use super::{InferMode, InferState, Role, Turn};
use crate::infer::search::Hit;
use crate::tui::infer_worker::InferEvent;

impl InferState {
    /// Applies a report of the inference thread about the job being streamed (reports
    /// about earlier, cancelled jobs are ignored).
    pub fn on_report(&mut self, ev: InferEvent) {
        let Some(cur) = self.streaming.clone() else {
            return;
        };
        match ev {
            InferEvent::Status { job, text } if job == cur.job => self.status = text,
            InferEvent::Hits {
                job,
                hits,
                searched,
            } if job == cur.job => {
                let text = format_hits(&hits, cur.mode == InferMode::Search);
                let h = self.histories.entry(cur.history).or_default();
                h.push(Turn {
                    role: Role::Context,
                    text,
                });
                if cur.mode == InferMode::Rag {
                    h.push(Turn {
                        role: Role::Assistant,
                        text: String::new(),
                    });
                }
                self.status = format!("{} of {searched} chunks retrieved", hits.len());
            }
            InferEvent::Token { job, text } if job == cur.job => {
                if let Some(s) = self.streaming.as_mut() {
                    s.tokens += 1;
                    s.first_token.get_or_insert_with(Instant::now);
                }
                if let Some(last) = self
                    .histories
                    .get_mut(&cur.history)
                    .and_then(|h| h.last_mut())
                    .filter(|t| t.role == Role::Assistant)
                {
                    last.text.push_str(&text);
                }
            }
            InferEvent::Done {
                job,
                generated,
                tokens_per_sec,
                stopped,
                cancelled,
            } if job == cur.job => {
                self.streaming = None;
                if cur.mode == InferMode::Search {
                    self.status =
                        format!("searched in {:.2} s", cur.started.elapsed().as_secs_f64());
                    return;
                }
                self.last_tps = tokens_per_sec;
                let ending = if cancelled {
                    "cancelled"
                } else if stopped {
                    "end of turn"
                } else {
                    "token limit"
                };
                // No token, no speed: "0 tokens · cancelled", never "0.0 tokens/s".
                let speed = tokens_per_sec.map_or(String::new(), |r| format!(" · {r:.1} tokens/s"));
                self.status = format!("{generated} tokens{speed} · {ending}");
            }
            InferEvent::Failed { job, error } if job == cur.job => {
                self.streaming = None;
                self.status = format!("error: {error}");
            }
            _ => {}
        }
    }

    /// Live tokens/s of the answer being streamed.
    pub fn streaming_tps(&self) -> Option<f64> {
        let s = self.streaming.as_ref()?;
        let t0 = s.first_token?;
        let secs = t0.elapsed().as_secs_f64();
        (secs > 0.0 && s.tokens > 1).then(|| (s.tokens - 1) as f64 / secs)
    }

    /// The inference thread is gone: nothing is streaming any more.
    pub fn on_worker_gone(&mut self) {
        self.streaming = None;
        self.status = "the inference thread has stopped".into();
    }
}

/// Retrieved chunks as the conversation shows them: rank, source and score, then the text
/// (whole for search results, the first line for a RAG answer's context).
pub fn format_hits(hits: &[Hit], full_text: bool) -> String {
    if hits.is_empty() {
        return "no chunks found".into();
    }
    hits.iter()
        .map(|h| {
            let text = if full_text {
                h.text.clone()
            } else {
                let first = h.text.lines().next().unwrap_or("");
                let short: String = first.chars().take(100).collect();
                if short.len() < h.text.len() {
                    format!("{short}…")
                } else {
                    short
                }
            };
            format!("[{}] {} · {:.3}\n{text}", h.rank, h.source, h.score)
        })
        .collect::<Vec<_>>()
        .join("\n")
}
