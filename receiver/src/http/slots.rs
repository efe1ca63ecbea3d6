//! Upload slots per device: one device may hold at most
//! `max_uploads_per_device` of the receiver's upload slots, so that a
//! device with many trickling uploads cannot starve the rest of the fleet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Uploads in flight per device; a device with none has no entry, so the
/// map is bounded by the uploads in flight.
#[derive(Default)]
pub struct DeviceSlots(Arc<Mutex<HashMap<String, usize>>>);

/// One device's upload slot, given back on drop.
pub struct DeviceSlot {
    slots: Arc<Mutex<HashMap<String, usize>>>,
    device: String,
}

impl DeviceSlots {
    /// A slot for `device`, or `None` when it already holds `max`.
    pub fn try_acquire(&self, device: &str, max: usize) -> Option<DeviceSlot> {
        let mut slots = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let held = slots.entry(device.to_owned()).or_insert(0);
        if *held >= max {
            return None;
        }
        *held += 1;
        Some(DeviceSlot {
            slots: Arc::clone(&self.0),
            device: device.to_owned(),
        })
    }
}

impl Drop for DeviceSlot {
    fn drop(&mut self) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = slots.get_mut(&self.device) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                slots.remove(&self.device);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_holds_at_most_max_and_gets_them_back() {
        let s = DeviceSlots::default();
        let a1 = s.try_acquire("a", 2).unwrap();
        let _a2 = s.try_acquire("a", 2).unwrap();
        assert!(s.try_acquire("a", 2).is_none());
        let _b = s
            .try_acquire("b", 2)
            .expect("another device is not affected");
        drop(a1);
        let _a3 = s.try_acquire("a", 2).expect("a slot given back is reused");
        drop((_a2, _a3));
        assert!(
            !s.0.lock().unwrap().contains_key("a"),
            "no entry left behind"
        );
    }
}
