//! The GenAI metric instruments, with the bucket boundaries the semantic conventions advise,
//! and ragscope's own retrieval, redaction and feedback metrics.

use opentelemetry::metrics::{Counter, Histogram, Meter};

const TOKEN_BUCKETS: [f64; 14] = [
    1.0,
    4.0,
    16.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];
const REQUEST_DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
const TTFT_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
const TPOT_BUCKETS: [f64; 13] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];
const DOCUMENT_BUCKETS: [f64; 9] = [0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0];
const SCORE_BUCKETS: [f64; 11] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
const FEEDBACK_BUCKETS: [f64; 12] = [
    -1.0, -0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0,
];

/// Every GenAI instrument, created once.
#[derive(Debug, Clone)]
pub struct GenAiInstruments {
    /// `gen_ai.client.token.usage` ({token}), by `gen_ai.token.type`.
    pub token_usage: Histogram<u64>,
    /// `gen_ai.server.request.duration` (s).
    pub request_duration: Histogram<f64>,
    /// `gen_ai.server.time_to_first_token` (s).
    pub time_to_first_token: Histogram<f64>,
    /// `gen_ai.server.time_per_output_token` (s).
    pub time_per_output_token: Histogram<f64>,
    /// `ragscope.rag.documents` ({document}): documents returned per response.
    pub rag_documents: Histogram<u64>,
    /// `ragscope.rag.top_score` (1): the best document score per response.
    pub rag_top_score: Histogram<f64>,
    /// `ragscope.rag.retrievals.empty` ({retrieval}): responses that retrieved nothing.
    pub rag_empty: Counter<u64>,
    /// `ragscope.redactions` ({match}): captured content replaced, by kind.
    pub redactions: Counter<u64>,
    /// `ragscope.feedback.score` (1): user feedback scores.
    pub feedback_score: Histogram<f64>,
    /// `ragscope.feedback` ({feedback}): feedback received, by label.
    pub feedback: Counter<u64>,
    /// `ragscope.genai.cost`: what inferences cost per `RAGSCOPE_PRICES`, by model and currency.
    pub cost: Counter<f64>,
    /// The duration, token and streaming-timing series bound per attribute set.
    pub(super) series: std::sync::Arc<super::genai_series::GenAiSeries>,
}

impl GenAiInstruments {
    /// Creates the instruments on `meter`.
    pub fn new(meter: &Meter) -> GenAiInstruments {
        GenAiInstruments {
            token_usage: meter
                .u64_histogram("gen_ai.client.token.usage")
                .with_unit("{token}")
                .with_description("Number of input and output tokens used.")
                .with_boundaries(TOKEN_BUCKETS.to_vec())
                .build(),
            request_duration: meter
                .f64_histogram("gen_ai.server.request.duration")
                .with_unit("s")
                .with_description("Generative AI server request duration.")
                .with_boundaries(REQUEST_DURATION_BUCKETS.to_vec())
                .build(),
            time_to_first_token: meter
                .f64_histogram("gen_ai.server.time_to_first_token")
                .with_unit("s")
                .with_description("Time to the first content-bearing event of a stream.")
                .with_boundaries(TTFT_BUCKETS.to_vec())
                .build(),
            time_per_output_token: meter
                .f64_histogram("gen_ai.server.time_per_output_token")
                .with_unit("s")
                .with_description("Time per output token generated after the first token.")
                .with_boundaries(TPOT_BUCKETS.to_vec())
                .build(),
            rag_documents: meter
                .u64_histogram("ragscope.rag.documents")
                .with_unit("{document}")
                .with_description("Retrieved documents returned per response.")
                .with_boundaries(DOCUMENT_BUCKETS.to_vec())
                .build(),
            rag_top_score: meter
                .f64_histogram("ragscope.rag.top_score")
                .with_unit("1")
                .with_description("Best retrieval score per response.")
                .with_boundaries(SCORE_BUCKETS.to_vec())
                .build(),
            rag_empty: meter
                .u64_counter("ragscope.rag.retrievals.empty")
                .with_unit("{retrieval}")
                .with_description("Responses whose retrieval returned no document.")
                .build(),
            redactions: meter
                .u64_counter("ragscope.redactions")
                .with_unit("{match}")
                .with_description("Matches replaced in captured content, by kind.")
                .build(),
            feedback_score: meter
                .f64_histogram("ragscope.feedback.score")
                // No unit on purpose: scores are whatever scale the application uses, and a
                // unit of "1" would turn the Prometheus name into `..._ratio`, which the alert
                // rules and dashboard do not expect.
                .with_description("User feedback scores.")
                .with_boundaries(FEEDBACK_BUCKETS.to_vec())
                .build(),
            feedback: meter
                .u64_counter("ragscope.feedback")
                .with_unit("{feedback}")
                .with_description("User feedback received, by label.")
                .build(),
            cost: meter
                .f64_counter("ragscope.genai.cost")
                // No unit: the amount is in `ragscope.genai.cost.currency`.
                .with_description("Inference cost per the price file, by model and currency.")
                .build(),
            series: Default::default(),
        }
    }
}
