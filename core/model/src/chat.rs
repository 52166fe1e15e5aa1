//! Chat templates: turning a list of messages into the prompt text a chat
//! model was trained on. The template is recognised from the model's Jinja
//! `chat_template` and rendered natively (ChatML, Llama 3).

use serde::{Deserialize, Serialize};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message with this role and content.
    pub fn new(role: &str, content: &str) -> Message {
        Message { role: role.to_string(), content: content.to_string() }
    }
}

/// A recognised chat format.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatTemplate {
    /// `<|im_start|>role\n...<|im_end|>\n` (SmolLM2, Qwen2), with the system
    /// prompt the template inserts when the conversation has none.
    ChatMl {
        /// Default system prompt.
        default_system: Option<String>,
    },
    /// `<|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>`.
    Llama3,
}

impl ChatTemplate {
    /// Recognises a Jinja chat template; `None` when no known format matches.
    pub fn detect(jinja: &str) -> Option<ChatTemplate> {
        if jinja.contains("<|im_start|>") {
            Some(ChatTemplate::ChatMl { default_system: default_chatml_system(jinja) })
        } else if jinja.contains("<|start_header_id|>") {
            Some(ChatTemplate::Llama3)
        } else {
            None
        }
    }

    /// The prompt for `messages`, ending with the assistant's turn opened.
    pub fn render(&self, messages: &[Message]) -> String {
        self.render_segments(messages).iter().map(Segment::text).collect()
    }

    /// The same prompt as segments: the template's own text (where its
    /// control tokens are) apart from what the messages say, so that the
    /// caller can tokenize message text as plain text.
    pub fn render_segments<'a>(&self, messages: &'a [Message]) -> Vec<Segment<'a>> {
        let mut out = Vec::new();
        match self {
            ChatTemplate::ChatMl { default_system } => {
                let has_system = messages.first().is_some_and(|m| m.role == "system");
                if let (false, Some(system)) = (has_system, default_system) {
                    out.push(Segment::Template(format!("<|im_start|>system\n{system}<|im_end|>\n")));
                }
                for m in messages {
                    out.push(Segment::Template(format!("<|im_start|>{}\n", role_text(&m.role))));
                    out.push(Segment::Content(&m.content));
                    out.push(Segment::Template("<|im_end|>\n".into()));
                }
                out.push(Segment::Template("<|im_start|>assistant\n".into()));
            }
            ChatTemplate::Llama3 => {
                out.push(Segment::Template("<|begin_of_text|>".into()));
                for m in messages {
                    let header = format!("<|start_header_id|>{}<|end_header_id|>\n\n", role_text(&m.role));
                    out.push(Segment::Template(header));
                    out.push(Segment::Content(m.content.trim()));
                    out.push(Segment::Template("<|eot_id|>".into()));
                }
                out.push(Segment::Template("<|start_header_id|>assistant<|end_header_id|>\n\n".into()));
            }
        }
        out
    }

    /// Token strings that end an assistant turn.
    pub fn stop_tokens(&self) -> &'static [&'static str] {
        match self {
            ChatTemplate::ChatMl { .. } => &["<|im_end|>"],
            ChatTemplate::Llama3 => &["<|eot_id|>", "<|end_of_text|>"],
        }
    }
}

/// A piece of a rendered chat prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment<'a> {
    /// The template's text, control tokens included.
    Template(String),
    /// A message's content: data, never control tokens.
    Content(&'a str),
}

impl Segment<'_> {
    /// The segment's text.
    pub fn text(&self) -> &str {
        match self {
            Segment::Template(text) => text,
            Segment::Content(text) => text,
        }
    }
}

/// A role as the template writes it: a role cannot carry markup either
/// (anything but letters, digits, `_` and `-` is dropped).
fn role_text(role: &str) -> String {
    role.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect()
}

/// The literal system prompt a ChatML template inserts, if any.
fn default_chatml_system(jinja: &str) -> Option<String> {
    let start = jinja.find("<|im_start|>system")? + "<|im_start|>system".len();
    let rest = &jinja[start..];
    let rest = rest.strip_prefix("\\n").or_else(|| rest.strip_prefix('\n'))?;
    let end = rest.find("<|im_end|>")?;
    let text = &rest[..end];
    // A template that splices a variable here has no fixed default.
    (!text.contains("{{") && !text.contains('\'') && !text.is_empty()).then(|| text.to_string())
}
