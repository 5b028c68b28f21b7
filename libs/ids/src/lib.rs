//! Identifiers shared by every OmenDB component.
//!
//! - [`Lsn`]: a byte position in a timeline's WAL. LSN 0 is the start of an empty timeline.
//! - [`TenantId`], [`TimelineId`]: 128-bit ids, written as 32 lowercase hex digits in text.
//!
//! Pure data types: no I/O.

use std::fmt;
use std::str::FromStr;

/// A byte position in a timeline's WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    /// The LSN `n_bytes` further on. Panics on overflow, which would mean 16 EiB of WAL.
    pub fn add(self, n_bytes: u64) -> Lsn {
        Lsn(self.0.checked_add(n_bytes).expect("LSN overflow"))
    }
}

impl fmt::Display for Lsn {
    /// PostgreSQL's spelling: high and low 32 bits in hex, `0/16B3748`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {input:?} (expected {expected})")]
pub struct ParseIdError {
    kind: &'static str,
    input: String,
    expected: &'static str,
}

impl FromStr for Lsn {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Lsn, ParseIdError> {
        let err = || ParseIdError {
            kind: "LSN",
            input: s.to_string(),
            expected: "HI/LO in hex",
        };
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

macro_rules! id128 {
    ($name:ident, $kind:literal) => {
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            pub fn from_u128(v: u128) -> $name {
                $name(v.to_be_bytes())
            }
            pub fn as_u128(&self) -> u128 {
                u128::from_be_bytes(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:032x}", self.as_u128())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<$name, ParseIdError> {
                let err = || ParseIdError {
                    kind: $kind,
                    input: s.to_string(),
                    expected: "32 hex digits",
                };
                if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(err());
                }
                u128::from_str_radix(s, 16)
                    .map($name::from_u128)
                    .map_err(|_| err())
            }
        }
    };
}

id128!(TenantId, "tenant id");
id128!(TimelineId, "timeline id");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_round_trip() {
        for v in [0u64, 1, 0x16B3748, 0x1_0000_0000, u64::MAX] {
            let lsn = Lsn(v);
            assert_eq!(lsn.to_string().parse::<Lsn>().unwrap(), lsn);
        }
        assert_eq!(Lsn(0x1_0000_00FF).to_string(), "1/FF");
        assert!("nope".parse::<Lsn>().is_err());
        assert!("1/".parse::<Lsn>().is_err());
    }

    #[test]
    fn id_text_round_trip() {
        let id = TimelineId::from_u128(0x0123456789abcdef_0011223344556677);
        let text = id.to_string();
        assert_eq!(text, "0123456789abcdef0011223344556677");
        assert_eq!(text.parse::<TimelineId>().unwrap(), id);
        assert!("0123".parse::<TimelineId>().is_err());
        assert!("g123456789abcdef0011223344556677"
            .parse::<TenantId>()
            .is_err());
    }
}
