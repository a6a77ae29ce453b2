//! Retry budget: retries may add at most a fraction to the load.
//!
//! Without a budget, every layer retrying twice turns an outage into a
//! multiplied storm. Each call deposits `ratio` tokens, each retry withdraws
//! one; a small reserve lets a quiet client still retry. (The scheme of
//! Finagle's and Linkerd's retry budgets, without their time windows: the
//! balance is capped instead.)

use std::sync::atomic::{AtomicU64, Ordering};

/// Settings of a [`RetryBudget`]; `Default`: 20 % extra load, reserve 10.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    /// Tokens deposited per call.
    pub ratio: f64,
    /// Tokens available at start.
    pub reserve: f64,
    /// Most tokens ever held.
    pub max_balance: f64,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            ratio: 0.2,
            reserve: 10.0,
            max_balance: 100.0,
        }
    }
}

/// A shared balance of retry tokens. Lock-free: every call deposits, so
/// under load this is touched by every request.
#[derive(Debug)]
pub struct RetryBudget {
    config: RetryBudgetConfig,
    /// The balance, as the bits of an `f64`.
    balance: AtomicU64,
    retries: AtomicU64,
    refused: AtomicU64,
}

impl RetryBudget {
    /// A budget with the given settings.
    pub fn new(config: RetryBudgetConfig) -> Self {
        RetryBudget {
            config,
            balance: AtomicU64::new(config.reserve.to_bits()),
            retries: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    fn balance(&self) -> f64 {
        f64::from_bits(self.balance.load(Ordering::Relaxed))
    }

    /// Records a call (first attempt).
    pub fn deposit(&self) {
        // A full budget (the healthy steady state) needs no write at all.
        if self.balance() >= self.config.max_balance {
            return;
        }
        let _ = self
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let next = (f64::from_bits(bits) + self.config.ratio).min(self.config.max_balance);
                Some(next.to_bits())
            });
    }

    /// Takes a token for a retry; `false` when the budget is spent.
    pub fn try_withdraw(&self) -> bool {
        let taken = self
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let balance = f64::from_bits(bits);
                (balance >= 1.0).then(|| (balance - 1.0).to_bits())
            })
            .is_ok();
        let counter = if taken { &self.retries } else { &self.refused };
        counter.fetch_add(1, Ordering::Relaxed);
        taken
    }

    /// `(retries granted, retries refused, balance)`, for statistics.
    pub fn snapshot(&self) -> (u64, u64, f64) {
        (
            self.retries.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.balance(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stop_when_spent_and_resume_with_traffic() {
        let budget = RetryBudget::new(RetryBudgetConfig {
            ratio: 0.5,
            reserve: 2.0,
            max_balance: 10.0,
        });
        assert!(budget.try_withdraw());
        assert!(budget.try_withdraw());
        assert!(!budget.try_withdraw());
        budget.deposit();
        budget.deposit();
        assert!(budget.try_withdraw());
        assert_eq!(budget.snapshot().0, 3);
        assert_eq!(budget.snapshot().1, 1);
    }
}
