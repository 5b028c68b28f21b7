//! Searching a sorted sequence from a predicted position. Pure; no I/O.

/// The number of leading indexes of `0..len` for which `is_before` holds, where `is_before` is
/// true on a prefix of `0..len` and false after it (like `slice::partition_point`), found by
/// galloping outward from `hint` and then bisecting the bracket found.
///
/// The cost is O(log d) calls of `is_before`, where `d` is the distance from `hint` to the
/// answer: 2 calls when the answer is `hint` or `hint + 1`. The answer is right whatever the
/// hint, so a bad prediction (a model decoded from damaged bytes, a key far outside the data)
/// costs time, never correctness. Never indexes outside `0..len`.
pub(crate) fn partition_point_near(
    len: usize,
    hint: usize,
    mut is_before: impl FnMut(usize) -> bool,
) -> usize {
    let hint = hint.min(len);
    // The answer lies in lo..=hi; the indexes lo..hi are not yet tested.
    let (mut lo, mut hi);
    if hint < len && is_before(hint) {
        lo = hint + 1;
        hi = len;
        let mut step = 1usize;
        loop {
            let probe = hint.saturating_add(step);
            if probe >= len {
                break;
            }
            if is_before(probe) {
                lo = probe + 1;
                step = step.saturating_mul(2);
            } else {
                hi = probe;
                break;
            }
        }
    } else {
        if hint == 0 {
            return 0;
        }
        lo = 0;
        hi = hint;
        let mut step = 1usize;
        loop {
            let probe = hint.saturating_sub(step);
            if is_before(probe) {
                lo = probe + 1;
                break;
            }
            hi = probe;
            if probe == 0 {
                break;
            }
            step = step.saturating_mul(2);
        }
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if is_before(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_partition_point_for_every_hint() {
        for len in 0..40usize {
            for answer in 0..=len {
                for hint in 0..=len + 3 {
                    let mut calls = 0usize;
                    let found = partition_point_near(len, hint, |i| {
                        assert!(i < len, "probe {i} outside 0..{len}");
                        calls += 1;
                        i < answer
                    });
                    assert_eq!(found, answer, "len {len} hint {hint}");
                    if hint == answer || hint + 1 == answer {
                        assert!(calls <= 2, "{calls} calls for a right hint");
                    }
                }
            }
        }
    }

    #[test]
    fn huge_lengths_do_not_overflow() {
        let answer = usize::MAX - 5;
        assert_eq!(partition_point_near(usize::MAX, 3, |i| i < answer), answer);
        assert_eq!(
            partition_point_near(usize::MAX, usize::MAX - 1, |i| i < 7),
            7
        );
    }
}
