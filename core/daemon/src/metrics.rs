//! Prometheus metrics: counters updated by the API, rendered as text on
//! `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Process-wide counters.
#[derive(Default)]
pub struct Metrics {
    /// Requests by outcome.
    pub requests_ok: AtomicU64,
    /// Requests answered with 4xx or 5xx.
    pub requests_failed: AtomicU64,
    /// Prompt tokens processed.
    pub prompt_tokens: AtomicU64,
    /// Tokens generated.
    pub completion_tokens: AtomicU64,
    /// Requests being served now.
    pub in_flight: AtomicU64,
    /// Texts embedded.
    pub embedded_texts: AtomicU64,
    /// Answers served from the answer cache.
    pub cache_hits: AtomicU64,
    /// Requests refused with 429 because their stage was full.
    pub rejected_busy: AtomicU64,
    /// Requests refused before their body was read (token, Host, Content-Type, draining).
    pub rejected_guard: AtomicU64,
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let rss = resident_bytes();
        format!(
            "# HELP tailor_requests_total HTTP API requests by outcome.\n# TYPE tailor_requests_total counter\n\
             tailor_requests_total{{outcome=\"ok\"}} {}\ntailor_requests_total{{outcome=\"error\"}} {}\n\
             # HELP tailor_prompt_tokens_total Prompt tokens processed.\n# TYPE tailor_prompt_tokens_total counter\n\
             tailor_prompt_tokens_total {}\n\
             # HELP tailor_completion_tokens_total Tokens generated.\n# TYPE tailor_completion_tokens_total counter\n\
             tailor_completion_tokens_total {}\n\
             # HELP tailor_embedded_texts_total Texts embedded.\n# TYPE tailor_embedded_texts_total counter\n\
             tailor_embedded_texts_total {}\n\
             # HELP tailor_requests_in_flight Requests being served.\n# TYPE tailor_requests_in_flight gauge\n\
             tailor_requests_in_flight {}\n\
             # HELP tailor_answer_cache_hits_total Answers served from the exact-match cache.\n# TYPE tailor_answer_cache_hits_total counter\n\
             tailor_answer_cache_hits_total {}\n\
             # HELP tailor_resident_memory_bytes Resident set size of tailord.\n# TYPE tailor_resident_memory_bytes gauge\n\
             tailor_resident_memory_bytes {rss}\n\
             # HELP tailor_requests_rejected_total Requests refused, by reason.\n# TYPE tailor_requests_rejected_total counter\n\
             tailor_requests_rejected_total{{reason=\"queue_full\"}} {}\n\
             tailor_requests_rejected_total{{reason=\"guard\"}} {}\n",
            get(&self.requests_ok),
            get(&self.requests_failed),
            get(&self.prompt_tokens),
            get(&self.completion_tokens),
            get(&self.embedded_texts),
            get(&self.in_flight),
            get(&self.cache_hits),
            get(&self.rejected_busy),
            get(&self.rejected_guard),
        )
    }
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    kib * 1024
}
