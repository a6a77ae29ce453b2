//! Retry budget: retries may add at most a fraction to the load.
//!
//! Without a budget, every layer retrying twice turns an outage into a
//! multiplied storm. Each call deposits `ratio` tokens, each retry withdraws
//! one; a small reserve lets a quiet client still retry. (The scheme of
//! Finagle's and Linkerd's retry budgets, without their time windows: the
//! balance is capped instead.)

use std::sync::Mutex;

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

/// A shared balance of retry tokens.
#[derive(Debug)]
pub struct RetryBudget {
    config: RetryBudgetConfig,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    balance: f64,
    retries: u64,
    refused: u64,
}

impl RetryBudget {
    /// A budget with the given settings.
    pub fn new(config: RetryBudgetConfig) -> Self {
        RetryBudget {
            config,
            state: Mutex::new(State {
                balance: config.reserve,
                retries: 0,
                refused: 0,
            }),
        }
    }

    /// Records a call (first attempt).
    pub fn deposit(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.balance = (s.balance + self.config.ratio).min(self.config.max_balance);
        }
    }

    /// Takes a token for a retry; `false` when the budget is spent.
    pub fn try_withdraw(&self) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        if s.balance >= 1.0 {
            s.balance -= 1.0;
            s.retries += 1;
            true
        } else {
            s.refused += 1;
            false
        }
    }

    /// `(retries granted, retries refused, balance)`, for statistics.
    pub fn snapshot(&self) -> (u64, u64, f64) {
        self.state
            .lock()
            .map(|s| (s.retries, s.refused, s.balance))
            .unwrap_or_default()
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
