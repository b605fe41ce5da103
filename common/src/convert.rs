//! Domain types ⇄ prost wire types. The only place outside `api` that builds or reads them for
//! the version algebra. Conversions from the wire validate and fail with INVALID_ARGUMENT.

use crate::api::pb;
use crate::error::{Error, Result};
use crate::validate;
use crate::version::{Actor, ConflictPolicy, Dot, KeyState, Version, VersionVector};

pub fn dot_to_pb(d: &Dot) -> pb::Dot {
    pb::Dot {
        node_id: d.actor.node_id.clone(),
        epoch: d.actor.epoch,
        counter: d.counter,
    }
}

/// An actor from the wire: its node id must be a valid node id (actor ids are repeated in
/// every context that names them, so a long one would be persisted into contexts forever).
fn actor_from_pb(node_id: &str, epoch: u64) -> Result<Actor> {
    if !validate::is_node_id(node_id) {
        return Err(Error::InvalidArgument(format!(
            "actor node id {} must be 1-{} chars of [a-z0-9._-]",
            validate::excerpt(node_id),
            validate::MAX_NODE_ID_LEN
        )));
    }
    Ok(Actor::new(node_id, epoch))
}

pub fn dot_from_pb(d: &pb::Dot) -> Result<Dot> {
    if d.counter == 0 {
        return Err(Error::InvalidArgument(format!(
            "dot needs a counter > 0, got {}:{}",
            validate::excerpt(&d.node_id),
            d.counter
        )));
    }
    Ok(Dot::new(actor_from_pb(&d.node_id, d.epoch)?, d.counter))
}

pub fn vv_to_pb(vv: &VersionVector) -> pb::VersionVector {
    pb::VersionVector {
        entries: vv
            .iter()
            .map(|(a, c)| pb::VectorEntry {
                node_id: a.node_id.clone(),
                epoch: a.epoch,
                counter: c,
            })
            .collect(),
        dots: vv.cloud().map(dot_to_pb).collect(),
    }
}

/// A version vector from the wire, within [`validate::MAX_CONTEXT_ENTRIES`] entries and
/// [`validate::MAX_CONTEXT_DOTS`] cloud dots; O(n log n) in its size.
pub fn vv_from_pb(vv: pb::VersionVector) -> Result<VersionVector> {
    if vv.entries.len() > validate::MAX_CONTEXT_ENTRIES
        || vv.dots.len() > validate::MAX_CONTEXT_DOTS
    {
        return Err(Error::InvalidArgument(format!(
            "version vector with {} entries and {} dots; the limits are {} and {}",
            vv.entries.len(),
            vv.dots.len(),
            validate::MAX_CONTEXT_ENTRIES,
            validate::MAX_CONTEXT_DOTS
        )));
    }
    let mut out = VersionVector::new();
    for e in vv.entries {
        let actor = actor_from_pb(&e.node_id, e.epoch)?;
        out.raise(&actor, e.counter);
    }
    for d in &vv.dots {
        out.add_dot(&dot_from_pb(d)?);
    }
    Ok(out)
}

pub fn version_to_pb(v: &Version) -> pb::Version {
    pb::Version {
        dot: Some(dot_to_pb(&v.dot)),
        context: Some(vv_to_pb(&v.context)),
        value: v.value.clone(),
        tombstone: v.tombstone,
        written_at_ms: v.written_at_ms,
        expires_at_ms: v.expires_at_ms,
        idempotency_key: v.idempotency_key.clone(),
    }
}

pub fn version_from_pb(v: pb::Version) -> Result<Version> {
    let dot = dot_from_pb(
        v.dot
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("version without dot".into()))?,
    )?;
    if v.value.len() > validate::HARD_MAX_VALUE_BYTES {
        return Err(Error::ValueTooLarge(format!(
            "version value is {} bytes; the hard limit is {}",
            v.value.len(),
            validate::HARD_MAX_VALUE_BYTES
        )));
    }
    validate::idempotency_key(&v.idempotency_key)?;
    Ok(Version {
        dot,
        context: vv_from_pb(v.context.unwrap_or_default())?,
        value: v.value,
        tombstone: v.tombstone,
        written_at_ms: v.written_at_ms,
        expires_at_ms: v.expires_at_ms,
        idempotency_key: v.idempotency_key,
    })
}

pub fn state_to_pb(s: &KeyState) -> pb::KeyState {
    pb::KeyState {
        versions: s.versions().iter().map(version_to_pb).collect(),
        context: Some(vv_to_pb(s.context())),
    }
}

/// Whether a wire key state is large enough that converting (and merging) it belongs on a
/// blocking thread rather than an async worker.
pub fn is_large_state(s: &pb::KeyState) -> bool {
    s.versions.len() > 32
        || s.versions.iter().map(|v| v.value.len()).sum::<usize>() > 64 * 1024
        || s.context
            .as_ref()
            .is_some_and(|c| c.entries.len() + c.dots.len() > 1024)
}

/// A key state from the wire (or a record), with at most [`validate::MAX_STATE_VERSIONS`]
/// versions, each validated.
pub fn state_from_pb(s: pb::KeyState) -> Result<KeyState> {
    if s.versions.len() > validate::MAX_STATE_VERSIONS {
        return Err(Error::InvalidArgument(format!(
            "key state with {} versions; the limit is {}",
            s.versions.len(),
            validate::MAX_STATE_VERSIONS
        )));
    }
    let versions = s
        .versions
        .into_iter()
        .map(version_from_pb)
        .collect::<Result<Vec<_>>>()?;
    Ok(KeyState::from_parts(
        versions,
        vv_from_pb(s.context.unwrap_or_default())?,
    ))
}

pub fn policy_from_pb(p: i32) -> ConflictPolicy {
    match pb::ConflictPolicy::try_from(p) {
        Ok(pb::ConflictPolicy::Lww) => ConflictPolicy::Lww,
        _ => ConflictPolicy::Siblings,
    }
}

pub fn policy_to_pb(p: ConflictPolicy) -> pb::ConflictPolicy {
    match p {
        ConflictPolicy::Siblings => pb::ConflictPolicy::Siblings,
        ConflictPolicy::Lww => pb::ConflictPolicy::Lww,
    }
}

pub fn range_to_pb(r: crate::token::TokenRange) -> pb::TokenRange {
    pb::TokenRange {
        start: r.start,
        end: r.end,
    }
}

/// A missing range on the wire means the whole ring.
pub fn range_from_pb(r: Option<pb::TokenRange>) -> crate::token::TokenRange {
    r.map(|r| crate::token::TokenRange::new(r.start, r.end))
        .unwrap_or(crate::token::TokenRange::FULL)
}

/// The range of a destructive request (DropRange, PurgeTombstones): it must be given, and a
/// whole-ring range (`start == end`) must also say `whole_ring`, so no request erases or
/// purges everything by leaving a field out.
pub fn explicit_range(
    r: Option<pb::TokenRange>,
    whole_ring: bool,
) -> Result<crate::token::TokenRange, crate::Error> {
    let Some(r) = r else {
        return Err(crate::Error::InvalidArgument(
            "range is required (a full-ring range also needs whole_ring = true)".into(),
        ));
    };
    let range = crate::token::TokenRange::new(r.start, r.end);
    if r.start == r.end && !whole_ring {
        return Err(crate::Error::InvalidArgument(format!(
            "range ({}, {}] is the whole ring: set whole_ring = true to mean it",
            r.start, r.end
        )));
    }
    Ok(range)
}

/// The wire form of a destructive request's range (sets `whole_ring` for a full range).
pub fn explicit_range_to_pb(r: crate::token::TokenRange) -> (Option<pb::TokenRange>, bool) {
    (Some(range_to_pb(r)), r.start == r.end)
}

#[cfg(test)]
mod tests {
    //! Hostile wire input to the domain conversions (mirrors the `context`, `record` and
    //! `request` fuzz targets in `fuzz/`): never a panic, always within the documented limits,
    //! and what is accepted round-trips.
    use super::*;
    use proptest::prelude::*;

    fn node_id() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("n1".to_string()),
            Just("n2".to_string()),
            "[a-z0-9][a-z0-9._-]{0,70}",
            ".{0,80}",
        ]
    }

    fn counter() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(u64::MAX),
            Just(u64::MAX - 1),
            any::<u64>(),
            0u64..64
        ]
    }

    fn vv() -> impl Strategy<Value = pb::VersionVector> {
        let entry = (node_id(), any::<u64>(), counter()).prop_map(|(node_id, epoch, counter)| {
            pb::VectorEntry {
                node_id,
                epoch,
                counter,
            }
        });
        let dot = (node_id(), 0u64..4, counter()).prop_map(|(node_id, epoch, counter)| pb::Dot {
            node_id,
            epoch,
            counter,
        });
        (
            prop::collection::vec(entry, 0..12),
            prop::collection::vec(dot, 0..24),
        )
            .prop_map(|(entries, dots)| pb::VersionVector { entries, dots })
    }

    fn state() -> impl Strategy<Value = pb::KeyState> {
        let version = (
            prop::option::of((node_id(), 0u64..4, counter())),
            prop::option::of(vv()),
            prop::collection::vec(any::<u8>(), 0..16),
            any::<bool>(),
            any::<u64>(),
            any::<u64>(),
            prop_oneof![Just(String::new()), ".{0,300}"],
        )
            .prop_map(|(dot, context, value, tombstone, w, e, idem)| pb::Version {
                dot: dot.map(|(node_id, epoch, counter)| pb::Dot {
                    node_id,
                    epoch,
                    counter,
                }),
                context,
                value,
                tombstone,
                written_at_ms: w,
                expires_at_ms: e,
                idempotency_key: idem,
            });
        (prop::collection::vec(version, 0..8), prop::option::of(vv()))
            .prop_map(|(versions, context)| pb::KeyState { versions, context })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(600))]

        /// Any vector converts or is refused; an accepted one names only valid actors and
        /// round-trips.
        #[test]
        fn version_vectors_from_the_wire(v in vv()) {
            if let Ok(out) = vv_from_pb(v) {
                for (a, _) in out.iter() {
                    prop_assert!(validate::is_node_id(&a.node_id));
                }
                prop_assert_eq!(vv_from_pb(vv_to_pb(&out)).unwrap(), out);
            }
        }

        /// Any key state converts or is refused; an accepted one is normalized, every version
        /// within its limits, and round-trips through the record format.
        #[test]
        fn key_states_from_the_wire(s in state()) {
            if let Ok(out) = state_from_pb(s) {
                for v in out.versions() {
                    prop_assert!(v.dot.counter > 0);
                    prop_assert!(v.idempotency_key.len() <= validate::MAX_IDEMPOTENCY_KEY_BYTES);
                    prop_assert!(!out.context().covers(&v.dot));
                }
                let rec = crate::framing::encode_state(&out);
                prop_assert_eq!(crate::framing::decode_state(&rec).unwrap(), out);
            }
        }

        /// Bytes that are almost a valid state (a valid encoding with bytes changed) never panic.
        #[test]
        fn mutated_states_never_panic(s in state(), flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
            use prost::Message;
            let mut bytes = s.encode_to_vec();
            for (at, b) in flips {
                if !bytes.is_empty() {
                    let i = at % bytes.len();
                    bytes[i] ^= b;
                }
            }
            if let Ok(m) = pb::KeyState::decode(bytes.as_slice()) {
                let _ = state_from_pb(m);
            }
        }
    }

    /// Building a vector is O(n log n): 65536 cloud dots, in the order that made the old
    /// decoder clone the whole cloud per dot, plus dots that absorb into the entry one by one.
    #[test]
    fn large_vectors_decode_in_n_log_n() {
        let dots = (0..validate::MAX_CONTEXT_DOTS as u64)
            .rev()
            .map(|i| pb::Dot {
                node_id: "n1".into(),
                epoch: 1,
                counter: 2 + 2 * i,
            })
            .collect();
        let v = vv_from_pb(pb::VersionVector {
            entries: vec![],
            dots,
        })
        .unwrap();
        assert_eq!(v.cloud_len(), validate::MAX_CONTEXT_DOTS);
        let contiguous = (1..=validate::MAX_CONTEXT_DOTS as u64)
            .map(|c| pb::Dot {
                node_id: "n1".into(),
                epoch: 1,
                counter: c,
            })
            .collect();
        let v = vv_from_pb(pb::VersionVector {
            entries: vec![],
            dots: contiguous,
        })
        .unwrap();
        assert_eq!((v.cloud_len(), v.entry_count()), (0, 1));
        let too_many = pb::VersionVector {
            entries: vec![],
            dots: vec![pb::Dot::default(); validate::MAX_CONTEXT_DOTS + 1],
        };
        assert!(vv_from_pb(too_many).is_err());
    }
}
