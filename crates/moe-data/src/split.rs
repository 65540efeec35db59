//! Train / validation / test assignment of whole documents. An explicit split (a split folder, a
//! `split` field, a corpus manifest) is kept; otherwise a fixed hash decides: u = FNV-1a 32-bit of
//! "<domain>/<doc id>" / 2^32, test when u < test, validation when u < test + validation, train
//! otherwise — so adding or removing one document never moves another. Then every domain of at
//! least 3 documents is given one validation and one test document if the hash gave it none.

use crate::error::{DataError, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validation,
    Test,
}

pub const SPLITS: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }

    /// The split a folder, file stem or field value names (train; validation, valid, val, dev; test).
    pub fn parse(s: &str) -> Option<Split> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Some(Split::Train),
            "validation" | "valid" | "val" | "dev" => Some(Split::Validation),
            "test" => Some(Split::Test),
            _ => None,
        }
    }
}

/// Fractions of documents held out by the hash.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitFractions {
    pub validation: f64,
    pub test: f64,
}

impl Default for SplitFractions {
    fn default() -> Self {
        SplitFractions { validation: 0.05, test: 0.05 }
    }
}

impl SplitFractions {
    pub fn validate(&self) -> Result<()> {
        let ok = |x: f64| x.is_finite() && (0.0..1.0).contains(&x);
        if !(ok(self.validation) && ok(self.test) && self.validation + self.test < 1.0) {
            return Err(DataError::Config(format!(
                "split fractions: validation ({}) and test ({}) must be in [0, 1) and sum to less than 1",
                self.validation, self.test
            )));
        }
        Ok(())
    }
}

/// FNV-1a 32-bit over the UTF-8 bytes of `s`.
pub fn fnv1a32(s: &str) -> u32 {
    s.bytes().fold(0x811c9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x01000193))
}

/// u in [0, 1) for a document: its position on the hash line.
pub fn hash_position(domain: &str, id: &str) -> f64 {
    fnv1a32(&format!("{domain}/{id}")) as f64 / 4294967296.0
}

/// The hashed split of a document.
pub fn hashed(domain: &str, id: &str, f: SplitFractions) -> Split {
    let u = hash_position(domain, id);
    if u < f.test {
        Split::Test
    } else if u < f.test + f.validation {
        Split::Validation
    } else {
        Split::Train
    }
}

/// One document of a domain, for the final assignment: its split, whether it was explicit, and its
/// hash position.
#[derive(Debug, Clone)]
pub struct Assigned {
    pub split: Split,
    pub explicit: bool,
    pub u: f64,
}

/// Gives a domain of at least 3 documents a validation and a test document when it has none,
/// taking hashed training documents in order of their hash position (lowest first). Explicit
/// splits are never moved. Returns the documents moved.
pub fn ensure_held_out(docs: &mut [Assigned]) -> usize {
    if docs.len() < 3 {
        return 0;
    }
    let mut moved = 0;
    for want in [Split::Test, Split::Validation] {
        if docs.iter().any(|d| d.split == want) {
            continue;
        }
        // Keep at least one training document.
        let trains = docs.iter().filter(|d| d.split == Split::Train).count();
        let candidate = docs.iter_mut().filter(|d| d.split == Split::Train && !d.explicit).min_by(|a, b| a.u.total_cmp(&b.u));
        if let (Some(c), true) = (candidate, trains > 1) {
            c.split = want;
            moved += 1;
        }
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_splits_follow_the_fractions_and_are_stable() {
        let f = SplitFractions::default();
        let n = 20000;
        let held = (0..n).filter(|i| hashed("d", &i.to_string(), f) != Split::Train).count();
        assert!((held as f64 / n as f64 - 0.1).abs() < 0.01, "{held} held out of {n}");
        assert_eq!(hashed("x", "doc", f), hashed("x", "doc", f));
        assert!(SplitFractions { validation: 0.6, test: 0.5 }.validate().is_err());
    }

    #[test]
    fn small_domains_get_one_validation_and_one_test_document() {
        let mut docs: Vec<Assigned> = (0..5).map(|i| Assigned { split: Split::Train, explicit: false, u: 0.5 + i as f64 / 10.0 }).collect();
        docs[4].explicit = true;
        assert_eq!(ensure_held_out(&mut docs), 2);
        assert_eq!(docs[0].split, Split::Test);
        assert_eq!(docs[1].split, Split::Validation);
        assert_eq!(docs[4].split, Split::Train);
        let mut two = docs[..2].to_vec();
        two.iter_mut().for_each(|d| d.split = Split::Train);
        assert_eq!(ensure_held_out(&mut two), 0, "two documents stay in train");
        let mut three: Vec<Assigned> = (0..3).map(|i| Assigned { split: Split::Train, explicit: false, u: i as f64 }).collect();
        ensure_held_out(&mut three);
        assert_eq!(three.iter().filter(|d| d.split == Split::Train).count(), 1);
    }
}
