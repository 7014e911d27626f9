//! The price file (`RAGSCOPE_PRICES`): what one inference cost, from its model and token counts.
//!
//! One price per line, `#` starts a comment, fields separated by blanks:
//!
//! ```text
//! # model (or glob)   input  output  cache-read  cache-write  currency
//! gpt-4o-mini*        0.15   0.60    0.075       -            USD
//! claude-sonnet-4*    3      15      0.30        3.75         USD
//! ```
//!
//! Prices are per million tokens. `-` for a cache price means "charged as input". The first line
//! whose pattern matches wins (`*` any run of characters, `?` one character); the response model
//! is tried first (it names what actually answered), then the request model. The file is read
//! once at start-up (a bad one stops it) and polled for changes ([`crate::reload`]); a bad new
//! version keeps the old one in service. Under a spend budget (`RAGSCOPE_COST_LIMIT`) the file
//! must be in one currency, and a new version in another one is refused like a bad one: a
//! budget's amounts do not change currency under it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use crate::reload::Swapped;
use std::time::Duration;

use tokio::task::JoinHandle;

/// Lines a price file may hold (a bound on what a reload can make ragscope keep).
pub const MAX_LINES: usize = 10_000;
/// Longest model pattern, in bytes.
pub const MAX_PATTERN: usize = 256;
/// Highest price per million tokens accepted: far above any real one, low enough that any
/// token count gives a finite cost.
pub const MAX_PRICE: f64 = 1e6;

/// One line of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    /// The model name or glob.
    pub pattern: String,
    /// Per million input tokens that were not read from or written to a cache.
    pub input: f64,
    /// Per million output tokens (reasoning included).
    pub output: f64,
    /// Per million cache-read input tokens; `None`: charged as input.
    pub cache_read: Option<f64>,
    /// Per million cache-write input tokens; `None`: charged as input.
    pub cache_write: Option<f64>,
    /// The currency code, e.g. `USD`.
    pub currency: String,
}

/// The token counts a cost is computed from (input includes cached input, as on the span).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens, cached ones included.
    pub input: i64,
    /// Output tokens, reasoning included.
    pub output: i64,
    /// Input tokens read from a cache.
    pub cache_read: i64,
    /// Input tokens written to a cache.
    pub cache_write: i64,
}

/// What one inference cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Cost {
    /// The amount, in `currency`.
    pub amount: f64,
    /// The currency code.
    pub currency: String,
}

impl Price {
    /// The cost of `usage` at this price.
    pub fn cost(&self, u: Usage) -> Cost {
        let cache_read = u.cache_read.max(0) as f64;
        let cache_write = u.cache_write.max(0) as f64;
        let plain = (u.input.max(0) as f64 - cache_read - cache_write).max(0.0);
        let amount = plain * self.input
            + cache_read * self.cache_read.unwrap_or(self.input)
            + cache_write * self.cache_write.unwrap_or(self.input)
            + u.output.max(0) as f64 * self.output;
        Cost {
            amount: amount / 1e6,
            currency: self.currency.clone(),
        }
    }
}

/// The parsed file, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTable {
    prices: Vec<Price>,
}

impl PriceTable {
    /// The price of the first line whose pattern matches one of `models` (tried in order).
    pub fn find<'a>(&self, models: impl IntoIterator<Item = &'a str>) -> Option<&Price> {
        models
            .into_iter()
            .find_map(|m| self.prices.iter().find(|p| glob(&p.pattern, m)))
    }

    /// The number of prices.
    pub fn len(&self) -> usize {
        self.prices.len()
    }

    /// Whether the file lists no price.
    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }

    /// The currencies the file names.
    pub fn currencies(&self) -> BTreeSet<&str> {
        self.prices.iter().map(|p| p.currency.as_str()).collect()
    }

    /// `Ok` when every price is in `currency` (and there is at least one price).
    fn in_one_currency(&self, currency: Option<&str>) -> Result<String, String> {
        let found = self.currencies();
        match (found.len(), found.first(), currency) {
            (1, Some(&c), None) => Ok(c.to_owned()),
            (1, Some(&c), Some(held)) if c == held => Ok(c.to_owned()),
            (0, ..) => Err("no price (a spend budget needs one currency)".to_owned()),
            _ => Err(format!(
                "prices in {} while a spend budget counts in {} (RAGSCOPE_COST_LIMIT needs one currency)",
                found.into_iter().collect::<Vec<_>>().join(", "),
                currency.unwrap_or("one currency"),
            )),
        }
    }
}

/// Parses a price file; the error names the first bad line.
pub fn parse(text: &[u8]) -> Result<PriceTable, String> {
    let text = std::str::from_utf8(text).map_err(|_| "the file is not UTF-8".to_owned())?;
    let mut prices = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        if prices.len() == MAX_LINES {
            return Err(format!("more than {MAX_LINES} prices"));
        }
        prices.push(parse_line(line).map_err(|e| format!("line {}: {e}", n + 1))?);
    }
    Ok(PriceTable { prices })
}

fn parse_line(line: &str) -> Result<Price, String> {
    const FORM: &str = "expected `MODEL INPUT OUTPUT CACHE_READ CACHE_WRITE CURRENCY`";
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [pattern, input, output, cache_read, cache_write, currency] = fields[..] else {
        return Err(format!("{} fields, {FORM}", fields.len()));
    };
    if pattern.len() > MAX_PATTERN {
        return Err(format!("a model pattern longer than {MAX_PATTERN} bytes"));
    }
    let amount = |what: &str, v: &str| -> Result<f64, String> {
        match v.parse::<f64>() {
            Ok(p) if (0.0..=MAX_PRICE).contains(&p) => Ok(p),
            _ => Err(format!(
                "{what} price {v:?} is not a number from 0 to {MAX_PRICE} ({FORM})"
            )),
        }
    };
    let optional = |what: &str, v: &str| match v {
        "-" => Ok(None),
        v => amount(what, v).map(Some),
    };
    if !(currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase())) {
        return Err(format!(
            "currency {currency:?} is not a three-letter code like USD"
        ));
    }
    Ok(Price {
        pattern: pattern.to_owned(),
        input: amount("input", input)?,
        output: amount("output", output)?,
        cache_read: optional("cache-read", cache_read)?,
        cache_write: optional("cache-write", cache_write)?,
        currency: currency.to_owned(),
    })
}

/// Whether `name` matches `pattern` (`*` any run, `?` one character). Linear in both lengths
/// times the number of stars at worst: the classic backtrack-to-last-star walk.
pub fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The price file in service, swapped whole when a valid new version is read.
#[derive(Debug)]
pub struct Prices {
    path: PathBuf,
    table: Swapped<PriceTable>,
    initial: [u8; 32],
    /// The one currency a spend budget holds the file to, once [`Prices::hold_currency`] ran.
    held: Arc<OnceLock<String>>,
}

impl Prices {
    /// Reads and parses the file (start-up: the caller turns an error into exit 2).
    pub fn load(path: &Path) -> Result<Prices, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
        let table = parse(&bytes)?;
        Ok(Prices {
            path: path.to_owned(),
            table: Arc::new(RwLock::new(Arc::new(table))),
            initial: crate::reload::fingerprint(&[bytes]),
            held: Arc::default(),
        })
    }

    /// Holds the file to its one currency (a spend budget counts in it): `Err` when it names
    /// none or several; from now on a new version in another currency is refused.
    pub fn hold_currency(&self) -> Result<String, String> {
        let currency = self
            .table()
            .in_one_currency(self.held.get().map(String::as_str))?;
        Ok(self.held.get_or_init(|| currency).clone())
    }

    /// The table in service.
    pub fn table(&self) -> Arc<PriceTable> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts polling the file; a valid new version replaces the table, a bad one (or one in
    /// another currency than the one held) is logged once and the old one stays.
    pub fn watch(&self, interval: Duration) -> JoinHandle<()> {
        let held = self.held.clone();
        crate::reload::watch_file(
            "price file",
            self.path.clone(),
            interval,
            self.initial,
            self.table.clone(),
            move |bytes| {
                let table = parse(bytes)?;
                if let Some(currency) = held.get() {
                    table.in_one_currency(Some(currency))?;
                }
                Ok(table)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# prices\n\
        gpt-4o-mini*   0.15 0.60 0.075 -    USD\n\
        claude-*       3    15   0.30  3.75 USD  # Anthropic\n\
        \n\
        local-?        0    0    -     -    EUR\n";

    #[test]
    fn parses_and_finds_the_first_match() {
        let t = parse(FILE.as_bytes()).expect("parses");
        assert_eq!(t.len(), 3);
        let p = t.find(["gpt-4o-mini-2024-07-18"]).expect("glob");
        assert_eq!((p.input, p.cache_write), (0.15, None));
        assert_eq!(
            t.find(["unknown", "claude-x"]).expect("second name").output,
            15.0
        );
        assert_eq!(t.find(["local-1"]).expect("?").currency, "EUR");
        assert!(t.find(["local-12", "gpt-4o"]).is_none());
    }

    #[test]
    fn cost_splits_cached_input_and_never_goes_negative() {
        let t = parse(FILE.as_bytes()).expect("parses");
        // (model, input, output, cache read, cache write) -> expected amount.
        for (model, [input, output, cache_read, cache_write], expected) in [
            // 10 plain + 80 read + 5 written input, 12 output.
            (
                "claude-x",
                [95, 12, 80, 5],
                10.0 * 3.0 + 80.0 * 0.30 + 5.0 * 3.75 + 12.0 * 15.0,
            ),
            // The unpriced cache write is charged as input; more cached than input is no
            // negative plain input.
            ("gpt-4o-mini", [10, 0, 4, 9], 4.0 * 0.075 + 9.0 * 0.15),
        ] {
            let c = t.find([model]).expect("price").cost(Usage {
                input,
                output,
                cache_read,
                cache_write,
            });
            assert!((c.amount - expected / 1e6).abs() < 1e-12, "{model}: {c:?}");
            assert_eq!(c.currency, "USD");
        }
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, needle) in [
            ("gpt 1 2 3 USD", "line 1: 5 fields"),
            ("\ngpt x 2 - - USD", "line 2: input price \"x\""),
            ("gpt 1 -2 - - USD", "output price"),
            ("gpt 1 2 NaN - USD", "cache-read price"),
            ("gpt 1 2 - inf USD", "cache-write price"),
            ("gpt 1e308 2 - - USD", "input price"),
            ("gpt 1 2 - - usd", "currency"),
            ("gpt 1 2 - - DOLLARS", "currency"),
        ] {
            let e = parse(text.as_bytes()).expect_err(text);
            assert!(e.contains(needle), "{text}: {e}");
        }
        assert!(parse(b"\xff").is_err());
        assert!(parse(format!("{} 1 1 - - USD", "m".repeat(300)).as_bytes()).is_err());
        assert_eq!(parse(b"# nothing\n").expect("empty is fine").len(), 0);
    }

    #[test]
    fn a_spend_budget_holds_the_file_to_one_currency() {
        let one = parse(b"a 1 1 - - USD\nb 2 2 - - USD\n").expect("parses");
        assert_eq!(one.in_one_currency(None).as_deref(), Ok("USD"));
        assert!(one.in_one_currency(Some("EUR")).is_err());
        let two = parse(FILE.as_bytes()).expect("parses");
        let e = two.in_one_currency(None).expect_err("two currencies");
        assert!(e.contains("EUR, USD"), "{e}");
        assert!(PriceTable::default().in_one_currency(None).is_err());
    }

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(glob("a*b", "abab"));
        assert!(!glob("a*b", "abac"));
        assert!(glob("gpt-?o", "gpt-4o"));
        assert!(!glob("gpt-?o", "gpt-4"));
        assert!(glob("é*", "été"));
        // Many stars against a long name stays fast (no exponential backtracking).
        assert!(!glob(&"*a".repeat(50), &"a".repeat(49)));
    }
}
