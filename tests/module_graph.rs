//! The library's modules depend on each other without cycles, and the device layer on nothing
//! above it: every `crate::<module>` path in `src/` (the binary's `cli` aside; unit tests
//! after a file's `#[cfg(test)]` aside) is an edge between top-level modules, and the graph
//! must have no cycle. A failure prints the cycle and the files that make each edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Crate-root re-exports, by the module that defines them.
const ROOT_ITEMS: [(&str, &str); 7] = [
    ("Gpu", "kernels"),
    ("Error", "error"),
    ("Result", "error"),
    ("MemoryConfig", "memory"),
    ("MemoryLayer", "memory"),
    ("ValuePool", "memory"),
    ("ValueDtype", "memory"),
];

type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn scan(dir: &Path, src: &Path, graph: &mut Graph) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            scan(&path, src, graph);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = path.strip_prefix(src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        if ["cli", "main", "lib"].contains(&top.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            let line = line.trim_start();
            if line.starts_with("#[cfg(test)]") {
                break;
            }
            if line.starts_with("//") {
                continue;
            }
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let module = ROOT_ITEMS
                    .iter()
                    .find(|(item, _)| *item == name)
                    .map_or(name.clone(), |(_, m)| m.to_string());
                if module != top && !module.is_empty() {
                    graph
                        .entry(top.clone())
                        .or_default()
                        .entry(module)
                        .or_default()
                        .insert(rel.display().to_string());
                }
            }
        }
    }
}

/// A cycle through `node`, if any, as the modules along it.
fn cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(n: &str, g: &Graph, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut c = path[at..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for next in g.get(n).into_iter().flat_map(|e| e.keys()) {
            if let Some(c) = visit(next, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn library_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = Graph::new();
    scan(&src, &src, &mut graph);
    for (module, deps) in &graph {
        println!(
            "{module} -> {}",
            deps.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    if let Some(c) = cycle(&graph) {
        let edges: Vec<String> = c
            .windows(2)
            .map(|w| {
                format!(
                    "{} -> {} ({})",
                    w[0],
                    w[1],
                    graph[&w[0]][&w[1]].iter().cloned().collect::<Vec<_>>().join(", ")
                )
            })
            .collect();
        panic!("module cycle {}:\n{}", c.join(" -> "), edges.join("\n"));
    }
    // The device knows nothing above it.
    let gpu: Vec<&String> = graph.get("gpu").map(|e| e.keys().collect()).unwrap_or_default();
    assert!(gpu.iter().all(|m| *m == "error"), "gpu depends on {gpu:?}");
    assert!(graph
        .get("reference")
        .is_none_or(|e| e.keys().all(|m| m == "constants" || m == "rng")));
}

/// The check itself: a graph with a cycle is caught, one without passes.
#[test]
fn the_cycle_finder_finds_cycles() {
    let edge = |g: &mut Graph, a: &str, b: &str| {
        g.entry(a.into())
            .or_default()
            .entry(b.into())
            .or_default()
            .insert("f.rs".into());
    };
    let mut g = Graph::new();
    edge(&mut g, "model", "kernels");
    edge(&mut g, "io", "model");
    edge(&mut g, "kernels", "gpu");
    assert_eq!(cycle(&g), None);
    edge(&mut g, "model", "io");
    assert_eq!(cycle(&g), Some(vec!["io".into(), "model".into(), "io".into()]));
}
