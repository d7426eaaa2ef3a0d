//! Cache hints for drivers that know their next requests ahead (the cluster
//! simulator draws its clients several messages early): start loading what a
//! coming call will read, so that memory waits overlap. A hint changes no state and
//! no result; without x86_64 it does nothing.

/// Start loading the cache line at `p`.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 reads no memory architecturally and never faults, whatever
    // the address; it only asks the cache for the line.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Start loading the lines of `*r` (a record that may straddle lines).
#[inline(always)]
pub fn prefetch_record<T>(r: &T) {
    let start: *const u8 = (r as *const T).cast();
    let mut at = 0;
    while at < std::mem::size_of::<T>() {
        prefetch(start.wrapping_add(at));
        at += 64;
    }
    prefetch(start.wrapping_add(std::mem::size_of::<T>().saturating_sub(1)));
}
