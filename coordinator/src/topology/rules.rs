//! Admission rules of a new topology change, checked inside the transaction that records it
//! (`MetaStore::create_change`), so two concurrent requests never both pass a rule that only
//! one of them may (two decommissions that would each leave enough NORMAL nodes, but not
//! both). Pure functions over the membership read in that transaction.

use pairdb_common::ring::NodeState;

use super::DEFAULT_N;
use crate::meta::Membership;

fn normal<'a>(m: &'a Membership, node_id: &str) -> Result<&'a crate::meta::NodeRecord, String> {
    let n = m
        .nodes
        .iter()
        .find(|n| n.node_id == node_id)
        .ok_or_else(|| format!("storage node {node_id} not found"))?;
    if n.state != NodeState::Normal {
        return Err(format!(
            "storage node {node_id} is {}; only a NORMAL node can leave the ring",
            n.state.as_str()
        ));
    }
    Ok(n)
}

/// A decommission of `node_id`: it is NORMAL, and at least one NORMAL node remains (with
/// `force`) or at least the largest replication factor of any tenant (without).
pub fn removal(node_id: &str, force: bool) -> impl Fn(&Membership) -> Result<(), String> + use<> {
    let node_id = node_id.to_string();
    move |m: &Membership| {
        normal(m, &node_id)?;
        let remaining = m
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Normal && n.node_id != node_id)
            .count();
        let max_rf = m.max_rf.map_or(DEFAULT_N, |r| r as usize).max(1);
        if remaining == 0 || (remaining < max_rf && !force) {
            return Err(format!(
                "removing {node_id} would leave {remaining} NORMAL node(s), fewer than the largest tenant replication factor ({max_rf})"
            ));
        }
        Ok(())
    }
}

/// A replacement of `old`: it is NORMAL.
pub fn replacement(old: &str) -> impl Fn(&Membership) -> Result<(), String> + use<> {
    let old = old.to_string();
    move |m: &Membership| normal(m, &old).map(|_| ())
}

/// A bootstrap: nothing beyond the node writes' own preconditions.
pub fn bootstrap(_: &Membership) -> Result<(), String> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::NodeRecord;

    fn members(states: &[NodeState], max_rf: Option<u32>) -> Membership {
        Membership {
            nodes: states
                .iter()
                .enumerate()
                .map(|(i, s)| NodeRecord::new(&format!("n{i}"), "127.0.0.1", 1, 2, *s))
                .collect(),
            max_rf,
        }
    }

    #[test]
    fn a_removal_keeps_at_least_the_largest_replication_factor_unless_forced() {
        use NodeState::*;
        let four = members(&[Normal, Normal, Normal, Normal], Some(3));
        assert!(removal("n0", false)(&four).is_ok());
        // A second decommission seen inside its transaction, after the first one's.
        let after = members(&[Leaving, Normal, Normal, Normal], Some(3));
        let why = removal("n1", false)(&after).unwrap_err();
        assert!(why.contains("leave 2 NORMAL"), "{why}");
        assert!(removal("n1", true)(&after).is_ok());
        let last = members(&[Leaving, Leaving, Leaving, Normal], Some(1));
        assert!(removal("n3", true)(&last).is_err());
        assert!(
            removal("n0", false)(&after)
                .unwrap_err()
                .contains("is LEAVING")
        );
        // Without tenants the default replication factor (3) applies.
        assert!(removal("n0", false)(&members(&[Normal; 3], None)).is_err());
        assert!(replacement("n9")(&four).unwrap_err().contains("not found"));
    }
}
