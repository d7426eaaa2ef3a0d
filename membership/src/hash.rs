//! Stable hash functions. Their outputs are part of the cluster's on-disk and
//! on-wire meaning (buckets, user map), so they must never change across
//! versions or platforms: everything here is spelled out, nothing comes from
//! `std`'s randomized `DefaultHasher`.

/// FNV-1a 64-bit offset basis.
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`, with ASCII letters folded to lower case first.
pub(crate) fn fnv1a64_ascii_lowercase(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(byte.to_ascii_lowercase())).wrapping_mul(FNV_PRIME)
    })
}

/// FNV-1a 64 of `bytes`, as they are.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_extend(FNV_OFFSET_BASIS, bytes)
}

/// Continues an FNV-1a 64 hash `hash` over more `bytes`.
pub(crate) fn fnv1a64_extend(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME)
    })
}

/// MurmurHash3's 64-bit finalizer: spreads every input bit over every output
/// bit. FNV's low bits are weak, and buckets are taken from the low bits.
pub(crate) fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// A stable 64-bit hash of a number under a salt; distinct salts give
/// independent-looking hash functions of the same number.
pub(crate) fn salted(value: u64, salt: u64) -> u64 {
    fmix64(value ^ fmix64(salt))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Published FNV-1a 64 test vectors (Fowler/Noll/Vo reference page).
    #[test]
    fn fnv1a64_matches_reference_vectors() {
        assert_eq!(fnv1a64_ascii_lowercase(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64_ascii_lowercase(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64_ascii_lowercase(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn ascii_case_is_folded_but_other_bytes_are_not() {
        assert_eq!(
            fnv1a64_ascii_lowercase(b"FooBar"),
            fnv1a64_ascii_lowercase(b"foobar")
        );
        assert_ne!(
            fnv1a64_ascii_lowercase("Ä".as_bytes()),
            fnv1a64_ascii_lowercase("ä".as_bytes())
        );
    }

    #[test]
    fn fmix64_is_a_bijection_on_samples_and_fixes_zero() {
        assert_eq!(fmix64(0), 0);
        let outputs: std::collections::BTreeSet<u64> = (0..10_000u64).map(fmix64).collect();
        assert_eq!(outputs.len(), 10_000);
    }

    #[test]
    fn salts_give_different_functions() {
        let same = (0..1_000u64)
            .filter(|v| salted(*v, 1) == salted(*v, 2))
            .count();
        assert_eq!(same, 0);
    }
}
