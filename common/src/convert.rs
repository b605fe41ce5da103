//! Domain types ⇄ prost wire types. The only place outside `api` that builds or reads them for
//! the version algebra. Conversions from the wire validate and fail with INVALID_ARGUMENT.

use crate::api::pb;
use crate::error::{Error, Result};
use crate::version::{Actor, ConflictPolicy, Dot, KeyState, Version, VersionVector};

pub fn dot_to_pb(d: &Dot) -> pb::Dot {
    pb::Dot {
        node_id: d.actor.node_id.clone(),
        epoch: d.actor.epoch,
        counter: d.counter,
    }
}

pub fn dot_from_pb(d: &pb::Dot) -> Result<Dot> {
    if d.node_id.is_empty() || d.counter == 0 {
        return Err(Error::InvalidArgument(format!(
            "dot needs a node id and a counter > 0, got {}:{}",
            d.node_id, d.counter
        )));
    }
    Ok(Dot::new(Actor::new(d.node_id.clone(), d.epoch), d.counter))
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

pub fn vv_from_pb(vv: pb::VersionVector) -> Result<VersionVector> {
    let mut out = VersionVector::new();
    for e in vv.entries {
        if e.node_id.is_empty() {
            return Err(Error::InvalidArgument(
                "version vector entry without node id".into(),
            ));
        }
        out.raise(&Actor::new(e.node_id, e.epoch), e.counter);
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

pub fn state_from_pb(s: pb::KeyState) -> Result<KeyState> {
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
