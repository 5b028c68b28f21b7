//! Decoding damaged bytes: every truncation and random flips are an error, or decode to an
//! index that answers lookups without panicking (and never claims a key it does not find).
//! Flips are tried twice: as they come (the checksum catches them) and with the checksum
//! recomputed, so that the structural validation behind it is exercised too.

mod support;

use learned_index::{Error, LearnedIndex};
use support::{Distribution, Rng};

/// Indexes with every part of the format in use: several levels, ties, a common prefix, none.
fn cases() -> Vec<(Vec<Vec<u8>>, LearnedIndex)> {
    let mut sets = vec![
        (support::keys(Distribution::Zipfian, 3_000, 1), 4),
        (support::keys(Distribution::Hard, 2_000, 2), 4),
        (support::keys(Distribution::Sequential, 1_000, 3), 16),
        (vec![b"only".to_vec()], 4),
        (Vec::new(), 4),
    ];
    let mut samehead: Vec<Vec<u8>> = (0..500u32)
        .map(|i| [b"samehead".as_slice(), &i.to_be_bytes()].concat())
        .collect();
    samehead.push(b"samehea".to_vec());
    samehead.sort();
    sets.push((samehead, 8));
    sets.into_iter()
        .map(|(keys, rows_per_page)| {
            let index = LearnedIndex::build(&keys, rows_per_page).unwrap();
            (keys, index)
        })
        .collect()
}

fn with_crc(mut body: Vec<u8>) -> Vec<u8> {
    let len = body.len() - 4;
    let crc = crc32c::crc32c(&body[..len]);
    body[len..].copy_from_slice(&crc.to_le_bytes());
    body
}

/// Runs lookups on a decoded (possibly damaged) index: it must not panic, and a key it
/// reports found must be that key.
fn exercise(index: &LearnedIndex, keys: &[Vec<u8>], rng: &mut Rng) {
    let _ = index.size_bytes();
    let _ = index.encode();
    for i in 0..40 {
        let probe = if keys.is_empty() || i % 4 == 0 {
            (0..rng.below(12)).map(|_| rng.next_u64() as u8).collect()
        } else {
            keys[rng.below(keys.len() as u64) as usize].clone()
        };
        if let Some(page) = index.page_for(&probe) {
            let _ = index.page_rows(page);
        }
        let _ = index.predict_rank(&probe);
        if let Some(rank) = index.lookup(keys, &probe) {
            assert_eq!(keys[rank], probe);
        }
    }
}

#[test]
fn every_truncation_is_an_error() {
    for (_, index) in cases() {
        let bytes = index.encode();
        assert_eq!(LearnedIndex::decode(&bytes).unwrap(), index);
        for len in 0..bytes.len() {
            assert!(
                LearnedIndex::decode(&bytes[..len]).is_err(),
                "{len} of {} bytes",
                bytes.len()
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(LearnedIndex::decode(&longer).is_err());
        // Truncated, then given a matching checksum: the structure must still catch it.
        for len in 16..bytes.len() {
            let mut cut = bytes[..len - 4].to_vec();
            cut.extend_from_slice(&[0; 4]);
            assert!(
                LearnedIndex::decode(&with_crc(cut)).is_err(),
                "{len} of {} bytes",
                bytes.len()
            );
        }
    }
}

#[test]
fn random_flips_error_out_or_decode_to_a_safe_index() {
    let mut rng = Rng::new(99);
    let mut caught_by_checksum = 0;
    let mut caught_by_structure = 0;
    let mut decoded_anyway = 0;
    for (keys, index) in cases() {
        let bytes = index.encode();
        for trial in 0..1_500 {
            let mut damaged = bytes.clone();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(damaged.len() as u64) as usize;
                damaged[at] ^= 1 + rng.below(255) as u8;
            }
            match LearnedIndex::decode(&damaged) {
                Err(_) => caught_by_checksum += 1,
                Ok(decoded) => exercise(&decoded, &keys, &mut rng),
            }
            // The same damage past the header, with the checksum made to match.
            if bytes.len() > 16 && trial % 2 == 0 {
                let mut damaged = bytes.clone();
                let at = 12 + rng.below((bytes.len() - 16) as u64) as usize;
                damaged[at] ^= 1 << rng.below(8);
                match LearnedIndex::decode(&with_crc(damaged)) {
                    Err(Error::Corrupt { .. }) => caught_by_structure += 1,
                    Err(other) => panic!("unexpected error {other}"),
                    Ok(decoded) => {
                        decoded_anyway += 1;
                        exercise(&decoded, &keys, &mut rng);
                    }
                }
            }
        }
    }
    // Slopes, intercepts and most fences decode to a valid (if wrong) index; counts, order and
    // limits must not.
    assert!(caught_by_checksum > 1_000);
    assert!(
        caught_by_structure > 100,
        "{caught_by_structure} caught by structure"
    );
    assert!(decoded_anyway > 100, "{decoded_anyway} decoded anyway");
}

#[test]
fn header_errors_say_what_is_wrong() {
    let (_, index) = cases().swap_remove(0);
    let bytes = index.encode();
    assert!(matches!(
        LearnedIndex::decode(&bytes[..3]),
        Err(Error::Truncated { .. })
    ));
    let mut bad_magic = bytes.clone();
    bad_magic[0] = b'X';
    assert!(matches!(
        LearnedIndex::decode(&bad_magic),
        Err(Error::BadMagic { .. })
    ));
    let mut future = bytes.clone();
    future[8] = 2;
    assert_eq!(
        LearnedIndex::decode(&future).unwrap_err(),
        Error::UnsupportedVersion {
            found: 2,
            supported: 1
        }
    );
    let mut flipped = bytes.clone();
    flipped[20] ^= 1;
    assert!(matches!(
        LearnedIndex::decode(&flipped),
        Err(Error::Checksum { .. })
    ));
    // A huge count with a matching checksum is refused before anything is allocated.
    let mut huge = bytes.clone();
    huge[20..28].copy_from_slice(&u64::MAX.to_le_bytes());
    let error = LearnedIndex::decode(&with_crc(huge)).unwrap_err();
    assert!(matches!(error, Error::Corrupt { .. }), "{error}");
    assert!(error.to_string().contains("KEYS_MAX") || error.to_string().contains("fences"));
}

/// Slopes and intercepts decode to any finite value: such an index is slow, not wrong.
#[test]
fn a_wrong_model_still_finds_every_key() {
    let keys = support::keys(Distribution::Uniform, 2_000, 5);
    let index = LearnedIndex::build(&keys, 16).unwrap();
    let bytes = index.encode();
    // magic, version, rows_per_page, epsilon, n_keys, prefix length, prefix, first_x, last_x,
    // n_levels, then level 0: its segment count and its keys.
    let keys_at = 8 + 4 + 4 + 4 + 8 + 4 + index.common_prefix().len() + 8 + 8 + 4 + 8;
    let n = index.n_segments();
    let (slopes_at, intercepts_at) = (keys_at + 8 * n, keys_at + 12 * n);
    for (slope, intercept) in [
        (0.0f32, 0i32),
        (-1e30, i32::MIN),
        (1e30, i32::MAX),
        (123.5, 77),
    ] {
        let mut damaged = bytes.clone();
        for i in 0..n {
            damaged[slopes_at + 4 * i..][..4].copy_from_slice(&slope.to_bits().to_le_bytes());
            damaged[intercepts_at + 4 * i..][..4].copy_from_slice(&intercept.to_le_bytes());
        }
        let wrong = LearnedIndex::decode(&with_crc(damaged)).unwrap();
        assert!(wrong.check(&keys).is_err());
        for (rank, key) in keys.iter().enumerate() {
            assert_eq!(wrong.lookup(&keys, key), Some(rank));
        }
    }
    let mut nan = bytes;
    nan[slopes_at..][..4].copy_from_slice(&f32::NAN.to_bits().to_le_bytes());
    assert!(matches!(
        LearnedIndex::decode(&with_crc(nan)),
        Err(Error::Corrupt { .. })
    ));
}
