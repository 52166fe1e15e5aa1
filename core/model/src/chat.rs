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
        let mut out = String::new();
        match self {
            ChatTemplate::ChatMl { default_system } => {
                let has_system = messages.first().is_some_and(|m| m.role == "system");
                if let (false, Some(system)) = (has_system, default_system) {
                    out.push_str(&format!("<|im_start|>system\n{system}<|im_end|>\n"));
                }
                for m in messages {
                    out.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
                }
                out.push_str("<|im_start|>assistant\n");
            }
            ChatTemplate::Llama3 => {
                out.push_str("<|begin_of_text|>");
                for m in messages {
                    out.push_str(&format!(
                        "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>",
                        m.role,
                        m.content.trim()
                    ));
                }
                out.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
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
