//! Decoding on a remote DeepSeek-OCR server that speaks the OpenAI chat-completions API with
//! image inputs (vLLM serves DeepSeek-OCR this way): the page image goes out as a PNG data URL
//! with the reference prompt, the text comes back. Timeouts, bounded retries with backoff, and a
//! limit on requests in flight.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::{Error, Result};

/// How to reach a remote decoder.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// The server's base URL, e.g. `http://gpu-box:8000/v1` (`/chat/completions` is appended).
    pub url: String,
    /// The model name the server serves (`deepseek-ai/DeepSeek-OCR` for vLLM's default).
    pub model: String,
    /// A bearer token (`Authorization: Bearer ...`), if the server wants one.
    pub api_key: Option<String>,
    /// The prompt; its `<image>` tag is dropped (the image travels as its own content part).
    pub prompt: String,
    /// The most tokens generated per page.
    pub max_tokens: usize,
    /// How long one request may take, connect to last byte.
    pub timeout: Duration,
    /// Retries after a failed attempt (connection errors, 408, 429, 5xx); 0 tries once.
    pub retries: u32,
    /// The first backoff; each retry doubles it (a `Retry-After` header wins when longer).
    pub backoff: Duration,
    /// The most requests in flight at once from this process.
    pub max_in_flight: usize,
    /// Ask for vLLM's n-gram repetition guard (`vllm_xargs`), as DeepSeek-OCR's model card
    /// runs it; the server must have been started with its logits processor.
    pub ngram_guard: bool,
}

impl RemoteOptions {
    /// Options for a server at `url` with the defaults: the model card's name and prompt,
    /// 2,048 tokens, 120 s timeout, 3 retries from 0.5 s, 4 requests in flight, no n-gram guard.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            model: "deepseek-ai/DeepSeek-OCR".into(),
            api_key: None,
            prompt: lethe_decoder::DEFAULT_PROMPT.into(),
            max_tokens: 2048,
            timeout: Duration::from_secs(120),
            retries: 3,
            backoff: Duration::from_millis(500),
            max_in_flight: 4,
            ngram_guard: false,
        }
    }
}

/// A page read by a remote decoder.
#[derive(Debug, Clone)]
pub struct RemoteReading {
    /// The text.
    pub text: String,
    /// Tokens generated, as the server reports them (0 when it does not).
    pub completion_tokens: u64,
    /// Whether generation stopped at the token limit (`finish_reason` `length`).
    pub hit_limit: bool,
    /// Attempts made (1 when the first succeeded).
    pub attempts: u32,
    /// Wall time of the call, retries included, in milliseconds.
    pub millis: f64,
}

/// A client of a remote DeepSeek-OCR server. Shared across threads; at most
/// [`RemoteOptions::max_in_flight`] requests run at once.
pub struct RemoteDecoder {
    options: RemoteOptions,
    endpoint: String,
    agent: ureq::Agent,
    in_flight: Mutex<usize>,
    freed: Condvar,
}

impl std::fmt::Debug for RemoteDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteDecoder")
            .field("endpoint", &self.endpoint)
            .field("model", &self.options.model)
            .finish_non_exhaustive()
    }
}

/// Why one attempt failed, and whether another may succeed.
struct Attempt {
    message: String,
    retry: bool,
    retry_after: Option<Duration>,
}

impl RemoteDecoder {
    /// A client for `options`; fails on a URL that is not http(s) or a zero limit.
    pub fn new(options: RemoteOptions) -> Result<Self> {
        let url = options.url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::Invalid(format!(
                "decoder URL {:?} must start with http:// or https://",
                options.url
            )));
        }
        if options.max_in_flight == 0 || options.max_tokens == 0 {
            return Err(Error::Invalid(
                "the remote decoder needs at least 1 request in flight and 1 token".into(),
            ));
        }
        let endpoint = if url.ends_with("/chat/completions") {
            url.to_string()
        } else {
            format!("{url}/chat/completions")
        };
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(options.timeout))
                .build(),
        );
        Ok(Self {
            options,
            endpoint,
            agent,
            in_flight: Mutex::new(0),
            freed: Condvar::new(),
        })
    }

    /// The endpoint requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The model name sent with each request.
    pub fn model(&self) -> &str {
        &self.options.model
    }

    /// Reads a PNG (or JPEG: `mime`) page image back to text.
    pub fn read_image(&self, bytes: &[u8], mime: &str) -> Result<RemoteReading> {
        let started = Instant::now();
        let body = self.request_body(bytes, mime);
        let _slot = self.slot();
        let mut backoff = self.options.backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.attempt(&body) {
                Ok((text, completion_tokens, hit_limit)) => {
                    return Ok(RemoteReading {
                        text,
                        completion_tokens,
                        hit_limit,
                        attempts,
                        millis: started.elapsed().as_secs_f64() * 1e3,
                    })
                }
                Err(a) if a.retry && attempts <= self.options.retries => {
                    std::thread::sleep(a.retry_after.map_or(backoff, |r| r.max(backoff)));
                    backoff *= 2;
                }
                Err(a) => {
                    let tries = if attempts > 1 {
                        format!(" (after {attempts} attempts)")
                    } else {
                        String::new()
                    };
                    return Err(Error::Invalid(format!(
                        "remote decoder {}: {}{tries}",
                        self.endpoint, a.message
                    )));
                }
            }
        }
    }

    fn request_body(&self, bytes: &[u8], mime: &str) -> Value {
        let data = base64::engine::general_purpose::STANDARD.encode(bytes);
        let prompt = self.options.prompt.replace("<image>", "");
        let mut body = json!({
            "model": self.options.model,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": format!("data:{mime};base64,{data}")}},
                {"type": "text", "text": prompt.trim()},
            ]}],
            "max_tokens": self.options.max_tokens,
            "temperature": 0.0,
        });
        if self.options.ngram_guard {
            // The values DeepSeek-OCR's model card gives vLLM's NGramPerReqLogitsProcessor; the
            // whitelist is the table cell tags <td> and </td>.
            body["skip_special_tokens"] = json!(false);
            body["vllm_xargs"] = json!({
                "ngram_size": 30, "window_size": 90, "whitelist_token_ids": [128821, 128822]
            });
        }
        body
    }

    fn attempt(&self, body: &Value) -> std::result::Result<(String, u64, bool), Attempt> {
        let mut request = self.agent.post(&self.endpoint);
        if let Some(key) = &self.options.api_key {
            request = request.header("authorization", &format!("Bearer {key}"));
        }
        let body = serde_json::to_vec(body).expect("a JSON value serialises");
        let mut response = request
            .header("content-type", "application/json")
            .send(&body[..])
            .map_err(|e| Attempt {
                message: match e {
                    ureq::Error::Timeout(_) => {
                        format!("no answer within {:?}", self.options.timeout)
                    }
                    e => format!("unreachable: {e}"),
                },
                retry: true,
                retry_after: None,
            })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.body_mut().read_to_string().map_err(|e| Attempt {
            message: format!("reading the reply: {e}"),
            retry: true,
            retry_after: None,
        })?;
        let excerpt = || text.chars().take(300).collect::<String>();
        match status {
            200..=299 => {}
            401 | 403 => {
                return Err(Attempt {
                    message: format!(
                        "unauthorised ({status}): check the key (--decoder-key-file): {}",
                        excerpt()
                    ),
                    retry: false,
                    retry_after: None,
                })
            }
            408 | 429 | 500..=599 => {
                return Err(Attempt {
                    message: format!("server error {status}: {}", excerpt()),
                    retry: true,
                    retry_after,
                })
            }
            _ => {
                return Err(Attempt {
                    message: format!("request refused ({status}): {}", excerpt()),
                    retry: false,
                    retry_after: None,
                })
            }
        }
        let malformed = |what: &str| Attempt {
            message: format!("malformed reply ({what}): {}", excerpt()),
            retry: false,
            retry_after: None,
        };
        let reply: Value = serde_json::from_str(&text).map_err(|_| malformed("not JSON"))?;
        let choice = &reply["choices"][0];
        let content = choice["message"]["content"]
            .as_str()
            .ok_or_else(|| malformed("no choices[0].message.content"))?;
        let tokens = reply["usage"]["completion_tokens"].as_u64().unwrap_or(0);
        Ok((
            content.to_string(),
            tokens,
            choice["finish_reason"] == "length",
        ))
    }

    /// Waits for a free request slot; the slot is given back when the guard drops.
    fn slot(&self) -> SlotGuard<'_> {
        let mut n = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        while *n >= self.options.max_in_flight {
            n = self.freed.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n += 1;
        SlotGuard(self)
    }
}

struct SlotGuard<'a>(&'a RemoteDecoder);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let mut n = self.0.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        *n -= 1;
        self.0.freed.notify_one();
    }
}
