//! Bucket sets as ascending, distinct `Vec<u16>`s: built by appending and sorting
//! once (a large one through a bitmap of the 65,536 bucket numbers), searched by
//! bisection, differenced in one pass (no tree node per bucket).

/// Whether `s` is ascending without duplicates.
pub(crate) fn is_set(s: &[u16]) -> bool {
    s.windows(2).all(|w| w[0] < w[1])
}

/// Above this many entries a set is sorted through a bitmap of all 65,536 bucket
/// numbers (8 KiB, one pass) rather than by comparisons.
const BITMAP_FROM: usize = 1024;

/// `v` ascending, without duplicates.
pub(crate) fn set_of(mut v: Vec<u16>) -> Vec<u16> {
    if is_set(&v) {
        return v;
    }
    if v.len() < BITMAP_FROM {
        v.sort_unstable();
        v.dedup();
        return v;
    }
    let mut bits = vec![0u64; 1024];
    for &b in &v {
        bits[usize::from(b >> 6)] |= 1 << (b & 63);
    }
    v.clear();
    for (word_at, &word) in bits.iter().enumerate() {
        let mut w = word;
        while w != 0 {
            // word_at < 1024 and the bit < 64: the number fits in u16.
            v.push(((word_at << 6) | w.trailing_zeros() as usize) as u16);
            w &= w - 1;
        }
    }
    v
}

/// The members of `a` not in `b` (both ascending, distinct), ascending.
pub(crate) fn difference(a: &[u16], b: &[u16]) -> Vec<u16> {
    let mut out = Vec::new();
    let mut j = 0;
    for &x in a {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        if b.get(j) != Some(&x) {
            out.push(x);
        }
    }
    out
}

/// Whether the set `s` holds `x`.
pub(crate) fn contains(s: &[u16], x: u16) -> bool {
    s.binary_search(&x).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_and_differences() {
        assert!(is_set(&[]) && is_set(&[1, 4]) && !is_set(&[4, 1]) && !is_set(&[2, 2]));
        assert_eq!(set_of(vec![5, 1, 5, 3]), vec![1, 3, 5]);
        // Large sets go through the bitmap: same answer as a sort.
        let big: Vec<u16> = (0..5000u32).map(|i| (i * 7919 % 65_536) as u16).collect();
        let mut want = big.clone();
        want.extend([65_535, 0, 65_535]);
        let mut with_ends = big.clone();
        with_ends.extend([65_535, 0, 65_535]);
        want.sort_unstable();
        want.dedup();
        assert_eq!(set_of(with_ends), want);
        assert_eq!(difference(&[1, 3, 5, 7], &[0, 3, 4, 7, 9]), vec![1, 5]);
        assert_eq!(difference(&[1, 3], &[]), vec![1, 3]);
        assert!(difference(&[2], &[2]).is_empty());
        assert!(contains(&[1, 3, 5], 3) && !contains(&[1, 3, 5], 4));
    }
}
