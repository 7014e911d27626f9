//! Where configuration values come from: the process environment, or a map a test hands in.

use std::collections::HashMap;

/// Where configuration values come from.
pub trait Source {
    /// The raw value of `name`, or `None` when it is not set.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Env;

impl Source for Env {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Source for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

/// Pairs in order; a name given twice takes the later value, as a shell would.
impl Source for [(&str, &str)] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}
