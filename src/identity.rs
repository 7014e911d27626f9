//! Who the client is, as the admit phase learns it. Access control stores the accepted API
//! key's name in the request's extensions; rate limiting and telemetry read it from there, so
//! neither depends on how the key was checked.

use std::sync::Arc;

/// The name of the API key a request was admitted with (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ApiKeyName(pub Arc<str>);

impl ApiKeyName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
