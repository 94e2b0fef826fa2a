//! Hands out guest-physical address ranges from a window, for PCI BARs and
//! other device regions the VMM places (the job firmware does on a PC).

/// A bump allocator over `[start, end)` with power-of-two alignment.
#[derive(Debug, Clone)]
pub struct AddressAllocator {
    next: u64,
    end: u64,
}

impl AddressAllocator {
    /// An allocator over `[start, end)`.
    pub fn new(start: u64, end: u64) -> Self {
        AddressAllocator { next: start, end }
    }

    /// Allocates `size` bytes aligned to `align` (a power of two, at least 1);
    /// `None` when the window is exhausted.
    pub fn allocate(&mut self, size: u64, align: u64) -> Option<u64> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        let start = self.next.checked_add(align - 1)? & !(align - 1);
        let end = start.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_bump_allocation() {
        let mut a = AddressAllocator::new(0x1000, 0x10000);
        assert_eq!(a.allocate(0x100, 0x100), Some(0x1000));
        assert_eq!(a.allocate(0x4000, 0x4000), Some(0x4000));
        assert_eq!(a.allocate(0x10000, 0x10000), None);
        assert_eq!(a.allocate(0, 1), None);
        assert_eq!(a.allocate(4, 3), None);
        assert_eq!(a.allocate(0x8000, 0x8000), Some(0x8000));
        assert_eq!(a.allocate(1, 1), None);
        let mut edge = AddressAllocator::new(u64::MAX - 4, u64::MAX);
        assert_eq!(edge.allocate(16, 16), None);
    }
}
