//! The reference system's contract as code: what each endpoint takes and
//! returns, what each event carries, and which stream keeps it.
//!
//! Callers and consumers use these types, so a field renamed in one service
//! is a compile error in the others rather than a runtime surprise. The
//! JSON field names are the public contract (`subjects.md`, the gateway).

pub mod access;
pub mod document;
pub mod generated;
pub mod inventory;
pub mod notifications;
pub mod orders;
pub mod users;

/// One line of an order or a reservation.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct Item {
    /// Stock keeping unit.
    pub sku: String,
    /// How many (at least 1).
    pub quantity: u32,
}

/// Validates order or reservation lines: at least one, skus non-empty,
/// quantities positive.
///
/// # Errors
///
/// A 400 naming the first problem.
pub fn validate_items(items: &[Item]) -> Result<(), switchboard::ServiceError> {
    if items.is_empty() {
        return Err(switchboard::ServiceError::bad_request(
            "items must not be empty",
        ));
    }
    for item in items {
        if item.sku.trim().is_empty() {
            return Err(switchboard::ServiceError::bad_request(
                "sku must not be empty",
            ));
        }
        if item.quantity == 0 {
            return Err(switchboard::ServiceError::bad_request(format!(
                "quantity of {} must be at least 1",
                item.sku
            )));
        }
    }
    Ok(())
}
