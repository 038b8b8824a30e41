//! Which node should own a shop: rendezvous (highest random weight) hashing.
//!
//! Every node scores every (node, shop) pair with the same hash and the highest score
//! wins, so all nodes agree on the owner from the live node list alone, with no
//! coordinator. When a node leaves, only its shops move (each to its next-best node,
//! spread over the others); when one joins, it takes about 1/N of the shops from each.

/// The node that should own `shop` among `nodes`, or None when there is none.
pub fn owner<'a>(shop: &str, nodes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    nodes.into_iter().max_by_key(|node| (score(node, shop), *node))
}

/// A 64-bit FNV-1a over `node \0 shop`, finished with a splitmix64 mix so that similar
/// names (node-1, node-2) score independently. Stable across builds and platforms: every
/// node of a cluster, whatever its version, must compute the same owner.
fn score(node: &str, shop: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes().chain(std::iter::once(0)).chain(shop.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn shops(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("shop-{i}")).collect()
    }

    fn assign<'a>(shops: &[String], nodes: &[&'a str]) -> BTreeMap<String, &'a str> {
        shops.iter().map(|s| (s.clone(), owner(s, nodes.iter().copied()).expect("a node"))).collect()
    }

    #[test]
    fn no_nodes_no_owner_and_the_answer_ignores_list_order() {
        assert_eq!(owner("shop", std::iter::empty()), None);
        for s in shops(50) {
            assert_eq!(owner(&s, ["a", "b", "c"]), owner(&s, ["c", "a", "b"]));
        }
    }

    #[test]
    fn shops_spread_evenly() {
        let all = shops(6000);
        let counts = assign(&all, &["node-1", "node-2", "node-3"]).into_values().fold(BTreeMap::new(), |mut m, n| {
            *m.entry(n).or_insert(0usize) += 1;
            m
        });
        for (node, c) in &counts {
            assert!((1800..=2200).contains(c), "{node} owns {c} of 6000: {counts:?}");
        }
    }

    #[test]
    fn a_node_leaving_moves_only_its_shops_and_spreads_them() {
        let all = shops(3000);
        let before = assign(&all, &["node-1", "node-2", "node-3", "node-4"]);
        let after = assign(&all, &["node-1", "node-2", "node-4"]);
        let mut moved_to = BTreeMap::new();
        for s in &all {
            if before[s] != "node-3" {
                assert_eq!(before[s], after[s], "{s} moved although its owner stayed");
            } else {
                *moved_to.entry(after[s]).or_insert(0usize) += 1;
            }
        }
        assert_eq!(moved_to.len(), 3, "node-3's shops went to every other node: {moved_to:?}");
        for c in moved_to.values() {
            assert!(*c > 150, "{moved_to:?}");
        }
    }

    #[test]
    fn a_node_joining_takes_about_its_share_and_nothing_else_moves() {
        let all = shops(3000);
        let before = assign(&all, &["node-1", "node-2"]);
        let after = assign(&all, &["node-1", "node-2", "node-3"]);
        let mut taken = 0;
        for s in &all {
            if after[s] == "node-3" {
                taken += 1;
            } else {
                assert_eq!(before[s], after[s], "{s} moved between the old nodes");
            }
        }
        assert!((850..=1150).contains(&taken), "node-3 took {taken} of 3000");
    }
}
