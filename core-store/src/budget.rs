//! The global memory budget for message bodies in flight, shared by every front-end.
//!
//! Each connection may buffer [`FREE_ALLOWANCE`] bytes of a request without asking; whatever a
//! body needs beyond that is reserved here first, and the bytes are allocated only after the
//! reservation succeeded. When the budget is spent, a reservation waits briefly for others to
//! finish and then fails: the front-end answers with its temporary-failure reply (MMTP `ERROR`,
//! IMMP `750`, XHMTP `503`) instead of allocating. Small requests therefore never wait, and
//! large ones from many stalled peers cannot take the process past the budget.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of one request a connection may hold without a reservation.
pub const FREE_ALLOWANCE: usize = 64 * 1024;
/// Granularity of reservations.
const UNIT: usize = 1024;

/// Why a reservation was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BudgetError {
    /// Every byte of the budget is in use and none came free in time.
    #[error("the server is busy (memory for message bodies in use); try again later")]
    Exhausted,
    /// The request alone is larger than the whole budget.
    #[error("request of {0} bytes is larger than the server's body budget")]
    TooLarge(usize),
}

/// The budget: a semaphore of 1 KiB units.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    units: Arc<Semaphore>,
    total_units: usize,
    wait: Duration,
}

impl MemoryBudget {
    /// A budget of `bytes`, where a reservation waits at most `wait` for room.
    pub fn new(bytes: usize, wait: Duration) -> Self {
        let total_units = bytes.div_ceil(UNIT).clamp(1, Semaphore::MAX_PERMITS);
        MemoryBudget {
            units: Arc::new(Semaphore::new(total_units)),
            total_units,
            wait,
        }
    }

    /// Bytes still free (for metrics and tests).
    pub fn available(&self) -> usize {
        self.units.available_permits() * UNIT
    }

    /// An empty reservation to grow as a body arrives.
    pub fn start(&self) -> Reservation {
        Reservation {
            budget: self.clone(),
            permits: None,
            units: 0,
        }
    }

    /// Reserve room for a body of `bytes` (the free allowance is not counted).
    pub async fn reserve(&self, bytes: usize) -> Result<Reservation, BudgetError> {
        let mut r = self.start();
        r.grow_to(bytes).await?;
        Ok(r)
    }
}

/// Bytes held for one body; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: MemoryBudget,
    permits: Option<OwnedSemaphorePermit>,
    units: usize,
}

impl Reservation {
    /// Bytes this reservation covers, the free allowance included.
    pub fn covers(&self) -> usize {
        self.units * UNIT + FREE_ALLOWANCE
    }

    /// Make the reservation cover `bytes` (waiting briefly for room).
    pub async fn grow_to(&mut self, bytes: usize) -> Result<(), BudgetError> {
        let want = bytes.saturating_sub(FREE_ALLOWANCE).div_ceil(UNIT);
        if want <= self.units {
            return Ok(());
        }
        if want > self.budget.total_units {
            return Err(BudgetError::TooLarge(bytes));
        }
        let more = u32::try_from(want - self.units).map_err(|_| BudgetError::TooLarge(bytes))?;
        let acquire = self.budget.units.clone().acquire_many_owned(more);
        let permit = match tokio::time::timeout(self.budget.wait, acquire).await {
            Ok(Ok(p)) => p,
            _ => return Err(BudgetError::Exhausted),
        };
        match &mut self.permits {
            Some(p) => p.merge(permit),
            None => self.permits = Some(permit),
        }
        self.units = want;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_count_beyond_the_allowance_and_come_back() {
        let b = MemoryBudget::new(1024 * 1024, Duration::from_millis(20));
        let small = b.reserve(FREE_ALLOWANCE).await.unwrap();
        assert_eq!(b.available(), 1024 * 1024);
        let big = b.reserve(FREE_ALLOWANCE + 512 * 1024).await.unwrap();
        assert_eq!(b.available(), 512 * 1024);
        assert_eq!(
            b.reserve(FREE_ALLOWANCE + 600 * 1024).await.unwrap_err(),
            BudgetError::Exhausted
        );
        drop(big);
        assert_eq!(b.available(), 1024 * 1024);
        assert!(matches!(
            b.reserve(FREE_ALLOWANCE + 2 * 1024 * 1024).await,
            Err(BudgetError::TooLarge(_))
        ));
        drop(small);
    }

    #[tokio::test]
    async fn a_growing_reservation_waits_for_room() {
        let b = MemoryBudget::new(256 * 1024, Duration::from_secs(5));
        let mut r = b.start();
        r.grow_to(FREE_ALLOWANCE + 100 * 1024).await.unwrap();
        r.grow_to(FREE_ALLOWANCE + 200 * 1024).await.unwrap();
        assert_eq!(b.available(), 56 * 1024);
        let held = b.reserve(FREE_ALLOWANCE + 56 * 1024).await.unwrap();
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.reserve(FREE_ALLOWANCE + 100 * 1024).await });
        tokio::task::yield_now().await;
        drop(r);
        assert!(waiter.await.unwrap().is_ok());
        drop(held);
    }
}
