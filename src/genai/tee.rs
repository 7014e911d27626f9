//! The bounded copy of a body the GenAI observation parses ([`Tee`]), its bytes reserved from
//! the process-wide [`ParseBudget`].

use std::sync::Arc;

use super::ParseBudget;

/// A bounded copy of a body. Past the bound it lets go of what it holds and only remembers
/// that the body was too big. Its bytes are reserved from the process-wide [`ParseBudget`]
/// as it grows; when the budget has no room it lets go the same way and remembers that.
#[derive(Debug)]
pub struct Tee {
    pub(super) buf: Vec<u8>,
    pub(super) limit: usize,
    pub(super) truncated: bool,
    /// The budget had no room: nothing is copied.
    pub(super) skipped: bool,
    pub(super) budget: Arc<ParseBudget>,
    /// Bytes reserved from the budget (the buffer's capacity), given back on drop.
    reserved: usize,
}

impl Tee {
    /// A copy that holds nothing (a placeholder).
    pub fn empty() -> Tee {
        Tee::new(0, Arc::new(ParseBudget::new(0)))
    }

    /// The bytes copied so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// A copy of at most `limit` bytes, reserving from `budget`.
    pub fn new(limit: usize, budget: Arc<ParseBudget>) -> Tee {
        Tee {
            buf: Vec::new(),
            limit,
            truncated: false,
            skipped: false,
            budget,
            reserved: 0,
        }
    }

    /// Copies `data`, unless the body went past the bound or the budget has no room.
    pub fn push(&mut self, data: &[u8]) {
        if self.truncated || self.skipped {
            return;
        }
        let needed = self.buf.len() + data.len();
        if needed > self.limit {
            self.truncated = true;
            self.let_go();
            return;
        }
        if needed > self.reserved && !self.grow(needed) {
            self.skipped = true;
            self.budget.note_skipped();
            self.let_go();
            return;
        }
        self.buf.extend_from_slice(data);
    }

    /// Whether the copy was skipped for want of budget.
    pub fn skipped(&self) -> bool {
        self.skipped
    }

    /// Reserves room for at least `needed` bytes: a doubling step if the budget has it, else
    /// just what is needed. The first reservation is exactly the first frame (as a plain
    /// `Vec` would allocate: a one-frame chat body costs no more than before); later ones
    /// double, so a body touches the shared counter a handful of times, not once per frame.
    fn grow(&mut self, needed: usize) -> bool {
        let step = (self.reserved * 2).max(needed);
        for want in [step.min(self.limit), needed] {
            if self.budget.try_reserve(want - self.reserved) {
                self.reserved = want;
                self.buf.reserve_exact(want - self.buf.len());
                return true;
            }
        }
        false
    }

    fn let_go(&mut self) {
        self.buf = Vec::new();
        self.budget.release(std::mem::take(&mut self.reserved));
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        self.budget.release(self.reserved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tee_is_bounded() {
        let budget = Arc::new(ParseBudget::new(1 << 20));
        let mut t = Tee::new(4, budget.clone());
        t.push(b"ab");
        t.push(b"cd");
        assert_eq!(t.buf, b"abcd");
        assert!(!t.truncated);
        t.push(b"e");
        assert!(t.truncated);
        assert!(t.buf.is_empty());
        t.push(b"f");
        assert!(t.buf.is_empty());
        assert_eq!(budget.in_use(), 0, "a truncated copy holds nothing");
    }

    #[test]
    fn tee_reserves_from_the_budget_and_gives_it_back() {
        let budget = Arc::new(ParseBudget::new(40 << 10));
        let mut a = Tee::new(1 << 20, budget.clone());
        a.push(&[1; 30 << 10]);
        assert!(!a.skipped && a.buf.len() == 30 << 10);
        assert!(budget.in_use() >= 30 << 10 && budget.in_use() <= 40 << 10);
        assert!(
            a.buf.capacity() <= a.reserved,
            "RSS follows the reservation"
        );
        // No room left for a second copy of that size: skipped, counted, nothing held.
        let mut b = Tee::new(1 << 20, budget.clone());
        b.push(&[2; 20 << 10]);
        assert!(b.skipped() && b.buf.is_empty());
        b.push(b"later frames are not copied either");
        assert!(b.buf.is_empty());
        assert_eq!(budget.skipped(), 1);
        drop(b);
        drop(a);
        assert_eq!(
            budget.in_use(),
            0,
            "every reservation is given back on drop"
        );
    }
}
