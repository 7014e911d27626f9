//! The estimator: what a request may cost before it is forwarded (its reservation), and what it
//! did cost once it ended (its charge) when the response did not say.
//!
//! * Input: one token per [`BYTES_PER_TOKEN`] bytes of the request body, rounded up. The
//!   whole JSON body counts, not only the message text, so the estimate errs high (tokenizers
//!   of current models average 3.5–4.5 bytes of English text a token).
//! * Output: the output cap the request names (`max_tokens`, `max_completion_tokens`,
//!   `max_output_tokens`, Gemini `generationConfig.maxOutputTokens`), else
//!   `RAGSCOPE_TOKEN_DEFAULT_MAX_OUTPUT`, times the choices asked for (OpenAI `n` or
//!   `best_of`, Gemini `candidateCount`, at most [`MAX_CHOICES`]); none for embeddings.
//! * A body over `RAGSCOPE_PARSE_MAX_BYTES` (or when the parse budget has no room) is not
//!   read whole: its input is estimated from its declared length (or the bytes read so far),
//!   its output is the default cap.
//!
//! The charge is the usage the response reports (JSON body or the stream's final usage
//! event). Without it, it is estimated and flagged so: the input estimate above (when the
//! upstream answered with success), and for the output one token per content-bearing stream
//! event (what OpenAI-compatible servers send) or, for a JSON answer, one token per
//! [`BYTES_PER_TOKEN`] bytes of the response body.

use crate::genai::api::{Api, Recognised};
use crate::genai::inference::Operation;

/// Bytes of text a token stands for in the estimates.
pub const BYTES_PER_TOKEN: u64 = 4;
/// The most choices one request is reserved for (OpenAI's own bound on `n`).
pub const MAX_CHOICES: u64 = 128;

/// What a request is expected to cost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Estimate {
    /// Input tokens.
    pub input: u64,
    /// Output tokens (the requested or default cap, times the choices).
    pub output: u64,
    /// The model the request names (what a spend budget prices the estimate at).
    pub model: Option<String>,
}

impl Estimate {
    /// The reservation: input and output together.
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }

    /// From a request body read whole.
    pub fn from_body(recognised: &Recognised, body: &[u8], default_output: u64) -> Estimate {
        let info = recognised.parse_request(body, false).ok();
        let positive = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok()).filter(|n| *n > 0);
        let cap = positive(info.as_ref().and_then(|i| i.max_tokens));
        let choices = positive(info.as_ref().and_then(|i| i.choices)).unwrap_or(1);
        Estimate {
            input: tokens_in(body.len() as u64),
            output: output_for(recognised.api, cap, default_output)
                .saturating_mul(choices.min(MAX_CHOICES)),
            model: info.and_then(|i| i.model),
        }
    }

    /// From the body's length alone (a body too large to read whole at admission): the
    /// model is the path's (Gemini) or unknown.
    pub fn from_length(recognised: &Recognised, len: u64, default_output: u64) -> Estimate {
        Estimate {
            input: tokens_in(len),
            output: output_for(recognised.api, None, default_output),
            model: recognised.model.clone(),
        }
    }
}

fn output_for(api: Api, cap: Option<u64>, default_output: u64) -> u64 {
    if api.operation() == Operation::Embeddings {
        return 0;
    }
    cap.unwrap_or(default_output)
}

/// Tokens in `bytes` of text, rounded up.
pub fn tokens_in(bytes: u64) -> u64 {
    bytes.div_ceil(BYTES_PER_TOKEN)
}

/// How an exchange ended, as far as charging it goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Input tokens the response reported.
    pub input_tokens: Option<i64>,
    /// Output tokens the response reported.
    pub output_tokens: Option<i64>,
    /// Stream events that carried content.
    pub content_events: u64,
    /// The response was an event stream.
    pub streamed: bool,
    /// Response body bytes handed to the client.
    pub response_bytes: u64,
    /// The upstream answered with a 2xx.
    pub success: bool,
    /// The client went away before the end.
    pub cancelled: bool,
    /// Input tokens read from a prompt cache, as reported (priced apart by a spend budget).
    pub cache_read_tokens: i64,
    /// Input tokens written to a prompt cache, as reported.
    pub cache_write_tokens: i64,
}

/// Where a charge came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// The usage the response reported.
    Reported,
    /// Estimated (no usage, or only part of it).
    Estimated,
}

impl Usage {
    /// Low-cardinality name.
    pub fn as_str(self) -> &'static str {
        match self {
            Usage::Reported => "reported",
            Usage::Estimated => "estimated",
        }
    }
}

/// What the exchange costs in tokens: from reported usage, else estimated from
/// `input_estimate` and what was streamed.
pub fn charge(input_estimate: u64, o: &Outcome) -> (u64, Usage) {
    let (input, output, usage) = charge_parts(input_estimate, o);
    (input.saturating_add(output), usage)
}

/// [`charge`] split into input and output tokens (a spend budget prices them apart).
pub fn charge_parts(input_estimate: u64, o: &Outcome) -> (u64, u64, Usage) {
    let reported = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok());
    let input = reported(o.input_tokens);
    let mut output = reported(o.output_tokens);
    if o.cancelled && o.streamed {
        // A stream cut short may carry only an early count (Anthropic's message_start says
        // output 1): what went past is the better measure when it is larger.
        output = output.map(|n| n.max(o.content_events));
    }
    let usage = match (input, output) {
        (Some(_), Some(_)) => Usage::Reported,
        _ => Usage::Estimated,
    };
    let input = input.unwrap_or(if o.success { input_estimate } else { 0 });
    let output = output.unwrap_or(match (o.streamed, o.success) {
        (true, _) => o.content_events,
        (false, true) => tokens_in(o.response_bytes),
        (false, false) => 0,
    });
    (input, output, usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recognised(path: &str) -> Recognised {
        Recognised::from_path(path).expect("recognised")
    }

    #[test]
    fn reservations_are_input_bytes_over_four_plus_the_output_cap() {
        let chat = recognised("/v1/chat/completions");
        let body =
            br#"{"model":"m","max_tokens":50,"messages":[{"role":"user","content":"hello"}]}"#;
        let e = Estimate::from_body(&chat, body, 4096);
        assert_eq!(e.input, (body.len() as u64).div_ceil(4));
        assert_eq!(e.output, 50);
        assert_eq!(e.total(), e.input + 50);
        // No cap named (or a nonsense one): the default.
        for body in [
            &br#"{"model":"m"}"#[..],
            br#"{"max_tokens":-3}"#,
            b"not json",
        ] {
            assert_eq!(Estimate::from_body(&chat, body, 4096).output, 4096);
        }
        let responses = recognised("/v1/responses");
        let e = Estimate::from_body(&responses, br#"{"max_output_tokens":7,"input":"x"}"#, 99);
        assert_eq!(e.output, 7);
        let gemini = recognised("/v1beta/models/g:generateContent");
        let e = Estimate::from_body(
            &gemini,
            br#"{"generationConfig":{"maxOutputTokens":256},"contents":[]}"#,
            99,
        );
        assert_eq!(e.output, 256);
        let embeddings = recognised("/v1/embeddings");
        assert_eq!(
            Estimate::from_body(&embeddings, br#"{"input":"abcdefgh"}"#, 4096).output,
            0
        );
        let big = Estimate::from_length(&chat, 4_000_001, 1000);
        assert_eq!((big.input, big.output), (1_000_001, 1000));
    }

    #[test]
    fn each_choice_asked_for_reserves_its_own_output() {
        let chat = recognised("/v1/chat/completions");
        let e = Estimate::from_body(&chat, br#"{"model":"m","max_tokens":50,"n":3}"#, 4096);
        assert_eq!((e.output, e.model.as_deref()), (150, Some("m")));
        assert_eq!(Estimate::from_body(&chat, br#"{"n":2}"#, 100).output, 200);
        // Completions' best_of generates that many.
        let completions = recognised("/v1/completions");
        let body = br#"{"max_tokens":10,"n":2,"best_of":5}"#;
        assert_eq!(Estimate::from_body(&completions, body, 1).output, 50);
        let gemini = recognised("/v1beta/models/g:generateContent");
        let body = br#"{"generationConfig":{"maxOutputTokens":20,"candidateCount":4}}"#;
        let e = Estimate::from_body(&gemini, body, 1);
        assert_eq!((e.output, e.model.as_deref()), (80, Some("g")));
        // Nonsense counts are one choice; a huge one is bounded.
        assert_eq!(
            Estimate::from_body(&chat, br#"{"max_tokens":5,"n":0}"#, 1).output,
            5
        );
        let huge = br#"{"max_tokens":5,"n":100000}"#;
        assert_eq!(Estimate::from_body(&chat, huge, 1).output, 5 * MAX_CHOICES);
    }

    #[test]
    fn reported_usage_is_the_charge() {
        let o = Outcome {
            input_tokens: Some(12),
            output_tokens: Some(30),
            success: true,
            ..Outcome::default()
        };
        assert_eq!(charge(500, &o), (42, Usage::Reported));
    }

    #[test]
    fn without_usage_the_charge_is_estimated_from_what_was_streamed() {
        let streamed = Outcome {
            streamed: true,
            content_events: 25,
            response_bytes: 5000,
            success: true,
            ..Outcome::default()
        };
        assert_eq!(charge(10, &streamed), (35, Usage::Estimated));
        let json = Outcome {
            response_bytes: 401,
            success: true,
            ..Outcome::default()
        };
        assert_eq!(charge(10, &json), (10 + 101, Usage::Estimated));
        // An upstream error or no answer at all costs nothing.
        assert_eq!(charge(10, &Outcome::default()), (0, Usage::Estimated));
        // Only the input reported: the rest is estimated.
        let partial = Outcome {
            input_tokens: Some(7),
            ..streamed
        };
        assert_eq!(charge(10, &partial), (32, Usage::Estimated));
    }

    #[test]
    fn a_cancelled_stream_is_charged_what_went_past() {
        let o = Outcome {
            input_tokens: Some(20),
            output_tokens: Some(1),
            streamed: true,
            content_events: 9,
            success: true,
            cancelled: true,
            ..Outcome::default()
        };
        assert_eq!(charge(100, &o), (29, Usage::Reported));
    }
}
