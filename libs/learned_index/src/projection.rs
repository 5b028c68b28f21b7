//! Keys as numbers: the order-preserving (not injective) projection of a byte-string key onto
//! a `u64`, and the separators that tell two adjacent pages apart when their keys share a
//! projection. Pure; no I/O.
//!
//! Every key of an index starts with the index's common prefix (the longest prefix shared by
//! all its keys); the prefix is cut off before projecting, so keys such as `user:000123` do not
//! spend their 8 bytes on `user:000`. The projection of the rest is its first 8 bytes,
//! big-endian, zero-padded: `a ≤ b ⇒ project(a) ≤ project(b)`. Different keys can share a
//! projection (`ab` and `ab\0`, or two keys equal in their first 8 bytes).

use std::cmp::Ordering;

/// Bytes of a key that the projection looks at.
pub const PROJECTION_BYTES: usize = 8;

/// Where a query key falls relative to the index's common prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement<'a> {
    /// The key sorts before every key that starts with the prefix.
    Below,
    /// The key sorts after every key that starts with the prefix.
    Above,
    /// The key starts with the prefix; this is the rest of it.
    Within(&'a [u8]),
}

/// Compares `key` with the common `prefix` of an index.
#[inline]
pub(crate) fn place<'a>(prefix: &[u8], key: &'a [u8]) -> Placement<'a> {
    // The common cases without a call to memcmp: no prefix, or a key that has it.
    if prefix.is_empty() {
        return Placement::Within(key);
    }
    if let Some(rest) = key.strip_prefix(prefix) {
        return Placement::Within(rest);
    }
    let shared = prefix.len().min(key.len());
    match key[..shared].cmp(&prefix[..shared]) {
        Ordering::Less => Placement::Below,
        Ordering::Greater => Placement::Above,
        // A proper prefix of the common prefix is shorter than every indexed key.
        Ordering::Equal if key.len() < prefix.len() => Placement::Below,
        Ordering::Equal => Placement::Within(&key[prefix.len()..]),
    }
}

/// The first 8 bytes of `rest`, big-endian, zero-padded.
#[inline]
pub(crate) fn project(rest: &[u8]) -> u64 {
    if let Some(bytes) = rest.first_chunk::<PROJECTION_BYTES>() {
        return u64::from_be_bytes(*bytes);
    }
    let mut bytes = [0u8; PROJECTION_BYTES];
    let n = rest.len().min(PROJECTION_BYTES);
    bytes[..n].copy_from_slice(&rest[..n]);
    u64::from_be_bytes(bytes)
}

/// The longest common prefix of two keys. For sorted keys, that of the first and the last is
/// the prefix shared by all of them.
pub fn common_prefix<'a>(first: &'a [u8], last: &[u8]) -> &'a [u8] {
    let shared = first.iter().zip(last).take_while(|(a, b)| a == b).count();
    &first[..shared]
}

/// The shortest `s` with `before < s ≤ after`, for `before < after`: `after` cut just past
/// the first byte where the two differ (LevelDB's `FindShortestSeparator`, on the `after`
/// side so it stays a prefix of a real key).
pub(crate) fn shortest_separator<'a>(before: &[u8], after: &'a [u8]) -> &'a [u8] {
    debug_assert!(before < after);
    let shared = before.iter().zip(after).take_while(|(a, b)| a == b).count();
    &after[..(shared + 1).min(after.len())]
}

/// Compares the concatenation of `parts` with `key`, without building it.
pub(crate) fn cmp_concat(parts: &[&[u8]], key: &[u8]) -> Ordering {
    let mut rest = key;
    for part in parts {
        if rest.len() < part.len() {
            return match part[..rest.len()].cmp(rest) {
                // What is left of `key` is a proper prefix of this part.
                Ordering::Equal => Ordering::Greater,
                other => other,
            };
        }
        let (head, tail) = rest.split_at(part.len());
        match (*part).cmp(head) {
            Ordering::Equal => rest = tail,
            other => return other,
        }
    }
    if rest.is_empty() {
        Ordering::Equal
    } else {
        Ordering::Less
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_is_monotone_and_pads_with_zeros() {
        let keys: [&[u8]; 7] = [b"", b"\0", b"a", b"a\0", b"ab", b"abcdefgh", b"abcdefghZ"];
        for pair in keys.windows(2) {
            assert!(project(pair[0]) <= project(pair[1]));
        }
        assert_eq!(project(b""), 0);
        assert_eq!(project(b"a"), project(b"a\0\0"));
        assert_eq!(project(b"abcdefgh"), project(b"abcdefghZZ"));
        assert_eq!(project(&[1, 2, 3, 4, 5, 6, 7, 8, 9]), 0x0102_0304_0506_0708);
    }

    #[test]
    fn placement_against_the_prefix() {
        assert_eq!(place(b"user:", b"user:12"), Placement::Within(b"12"));
        assert_eq!(place(b"user:", b"user:"), Placement::Within(b""));
        assert_eq!(place(b"user:", b"use"), Placement::Below);
        assert_eq!(place(b"user:", b"usea"), Placement::Below);
        assert_eq!(place(b"user:", b"usez"), Placement::Above);
        assert_eq!(place(b"", b"x"), Placement::Within(b"x"));
    }

    #[test]
    fn separators_split_and_stay_short() {
        let cases: [(&[u8], &[u8], &[u8]); 4] = [
            (b"abc", b"abd", b"abd"),
            (b"ab", b"ab\0", b"ab\0"),
            (b"abcdefgh1xyz", b"abcdefgh2", b"abcdefgh2"),
            (b"a", b"bcd", b"b"),
        ];
        for (before, after, expected) in cases {
            let separator = shortest_separator(before, after);
            assert_eq!(separator, expected);
            assert!(before < separator && separator <= after);
        }
    }

    #[test]
    fn concat_comparison() {
        let parts: [&[u8]; 4] = [b"", b"a", b"ab", b"\0"];
        let keys: [&[u8]; 9] = [
            b"", b"a", b"aa", b"aab", b"aab\0", b"ab", b"ab\0", b"b", b"\0",
        ];
        for a in parts {
            for b in parts {
                for c in parts {
                    let whole = [a, b, c].concat();
                    for key in keys {
                        assert_eq!(cmp_concat(&[a, b, c], key), whole.as_slice().cmp(key));
                    }
                }
            }
        }
    }
}
