//! Fast all-zero detection for page-sized blocks.

/// True when every byte of `data` is zero.
///
/// Compares 64 bytes at a time as four `u128` words (the compiler turns this
/// into vector loads), leaving early at the first non-zero chunk, so a page
/// of random data costs a single chunk and a zero page one pass over it.
///
/// ```
/// assert!(ssm::is_zero(&[0u8; 4096]));
/// let mut page = [0u8; 4096];
/// page[4095] = 1;
/// assert!(!ssm::is_zero(&page));
/// ```
pub fn is_zero(data: &[u8]) -> bool {
    let mut chunks = data.chunks_exact(64);
    for c in &mut chunks {
        let word = |i: usize| {
            let mut w = [0u8; 16];
            w.copy_from_slice(&c[i * 16..i * 16 + 16]);
            u128::from_ne_bytes(w)
        };
        if word(0) | word(1) | word(2) | word(3) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_and_short_inputs() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 63]));
        assert!(!is_zero(&[0, 0, 1]));
    }

    proptest! {
        #[test]
        fn matches_bytewise_check(len in 0usize..300, pos in 0usize..300, val in 1u8..=255) {
            let mut v = vec![0u8; len];
            if pos < len {
                v[pos] = val;
            }
            prop_assert_eq!(is_zero(&v), v.iter().all(|&b| b == 0));
        }
    }
}
