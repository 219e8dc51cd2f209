//! Dependency order: waves of services that can start (or stop) together, and cycle finding.
//! Pure functions over names; no I/O.

use std::collections::{BTreeMap, BTreeSet};

/// A service and the names it depends on.
pub(crate) struct Node<'a> {
    pub(crate) name: &'a str,
    pub(crate) deps: Vec<&'a str>,
}

/// A dependency cycle, as the names along it with the first repeated at the end.
pub(crate) fn find_cycle(nodes: &[Node<'_>]) -> Option<Vec<String>> {
    let graph: BTreeMap<&str, &[&str]> =
        nodes.iter().map(|n| (n.name, n.deps.as_slice())).collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit<'a>(
        name: &'a str,
        graph: &BTreeMap<&'a str, &[&'a str]>,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match marks.get(name) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = path
                    .iter()
                    .position(|n| *n == name)
                    .expect("an open node is on the path");
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(name.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(name, Mark::Open);
        path.push(name);
        for dep in graph.get(name).copied().unwrap_or_default() {
            if let Some(c) = visit(dep, graph, marks, path) {
                return Some(c);
            }
        }
        path.pop();
        marks.insert(name, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in nodes {
        if let Some(c) = visit(n.name, &graph, &mut marks, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

/// Start order over `targets`: each wave depends only on earlier waves (edges to services
/// outside `targets` are ignored). With `reverse`, the stop order: dependents first.
/// Assumes no cycle among the targets (a cycle's members go in a last wave together).
pub(crate) fn waves(
    nodes: &[Node<'_>],
    targets: &BTreeSet<&str>,
    reverse: bool,
) -> Vec<Vec<String>> {
    let deps: BTreeMap<&str, BTreeSet<&str>> = nodes
        .iter()
        .filter(|n| targets.contains(n.name))
        .map(|n| {
            (
                n.name,
                n.deps
                    .iter()
                    .copied()
                    .filter(|d| targets.contains(d) && *d != n.name)
                    .collect(),
            )
        })
        .collect();
    // For stopping, invert the edges: a service waits for its dependents.
    let waits_for: BTreeMap<&str, BTreeSet<&str>> = if reverse {
        let mut inv: BTreeMap<&str, BTreeSet<&str>> =
            deps.keys().map(|k| (*k, BTreeSet::new())).collect();
        for (name, ds) in &deps {
            for d in ds {
                inv.entry(d).or_default().insert(name);
            }
        }
        inv
    } else {
        deps
    };
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    while done.len() < waits_for.len() {
        let wave: Vec<&str> = waits_for
            .iter()
            .filter(|(n, ws)| !done.contains(*n) && ws.iter().all(|w| done.contains(w)))
            .map(|(n, _)| *n)
            .collect();
        if wave.is_empty() {
            out.push(
                waits_for
                    .keys()
                    .filter(|n| !done.contains(*n))
                    .map(|n| n.to_string())
                    .collect(),
            );
            break;
        }
        done.extend(wave.iter().copied());
        out.push(wave.into_iter().map(str::to_string).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes<'a>(edges: &[(&'a str, &[&'a str])]) -> Vec<Node<'a>> {
        edges
            .iter()
            .map(|(n, d)| Node {
                name: n,
                deps: d.to_vec(),
            })
            .collect()
    }

    #[test]
    fn a_chain_starts_in_order_and_stops_in_reverse() {
        let g = nodes(&[
            ("web", &["api"]),
            ("api", &["db"]),
            ("db", &[]),
            ("cron", &[]),
        ]);
        let all: BTreeSet<&str> = ["web", "api", "db", "cron"].into();
        assert_eq!(
            waves(&g, &all, false),
            vec![vec!["cron", "db"], vec!["api"], vec!["web"]]
        );
        assert_eq!(
            waves(&g, &all, true),
            vec![vec!["cron", "web"], vec!["api"], vec!["db"]]
        );
        let some: BTreeSet<&str> = ["web", "db"].into();
        assert_eq!(
            waves(&g, &some, false),
            vec![vec!["db", "web"]],
            "edges through others are ignored"
        );
    }

    #[test]
    fn cycles_are_named() {
        let g = nodes(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &[])]);
        assert_eq!(
            find_cycle(&g),
            Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        let g = nodes(&[("a", &["a"])]);
        assert_eq!(find_cycle(&g), Some(vec!["a".into(), "a".into()]));
        let g = nodes(&[("a", &["b"]), ("b", &[])]);
        assert_eq!(find_cycle(&g), None);
    }
}
