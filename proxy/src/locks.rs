//! Taking a lock whose holder panicked. The standard library then refuses
//! the lock ("poisoned"); skipping the work instead would turn one panic
//! into silently dropped work everywhere the lock is used. Here the data is
//! taken as the panicking holder left it, the poisoning is logged once as an
//! error (with where it was found) and cleared.

use std::panic::Location;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`.
#[track_caller]
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| {
        poisoned_at(Location::caller());
        m.clear_poison();
        poisoned.into_inner()
    })
}

/// Locks `l` for reading.
#[track_caller]
pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|poisoned| {
        poisoned_at(Location::caller());
        l.clear_poison();
        poisoned.into_inner()
    })
}

/// Locks `l` for writing.
#[track_caller]
pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|poisoned| {
        poisoned_at(Location::caller());
        l.clear_poison();
        poisoned.into_inner()
    })
}

fn poisoned_at(at: &Location<'_>) {
    tracing::error!(
        %at,
        "a task panicked while holding a lock; its data is used as the task left it"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_poisoned_lock_is_taken_with_its_data_and_cleared() {
        let m = Arc::new(Mutex::new(vec![1]));
        let l = Arc::new(RwLock::new(7));
        let (m2, l2) = (m.clone(), l.clone());
        let panicked = std::thread::spawn(move || {
            let mut v = m2.lock().unwrap_or_else(|p| p.into_inner());
            let _w = l2.write().unwrap_or_else(|p| p.into_inner());
            v.push(2);
            panic!("a holder panics");
        })
        .join();
        assert!(panicked.is_err());
        assert!(m.is_poisoned() && l.is_poisoned());
        assert_eq!(*lock(&m), vec![1, 2]);
        assert!(!m.is_poisoned(), "cleared once taken");
        assert_eq!(*read(&l), 7);
        *write(&l) += 1;
        assert_eq!(*read(&l), 8);
        assert!(!l.is_poisoned());
    }
}
