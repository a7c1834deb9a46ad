//! The platform's modules form layers: no file imports another that
//! (through any chain) imports it back, and neither do the top-level
//! modules (`app`, `components`, `invoke`, `runtime`, `capabilities`, ...).
//! See `docs/architecture.md`. Imports are read from the source as
//! `crate::a::b` paths (and `super::x`), test modules excluded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`capabilities::queue::rabbitmq`) → source text.
fn modules() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(&root).unwrap().with_extension("");
                let mut parts: Vec<String> = rel
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect();
                if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
                    parts.pop();
                }
                let text = std::fs::read_to_string(&path).unwrap();
                // Unit tests may reach anywhere.
                let text = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
                out.insert(parts.join("::"), text);
            }
        }
    }
    out
}

/// The longest known module that `path` (`a::b::Item`) starts with.
fn resolve<'a>(modules: &'a BTreeMap<String, String>, path: &str) -> Option<&'a str> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find_map(|m| modules.get_key_value(&m).map(|(k, _)| k.as_str()))
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// File-level imports: module → modules it names.
fn imports(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for (module, text) in modules {
        let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
        let mut deps = BTreeSet::new();
        let code: String = text
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        for (prefix, base) in [("crate::", String::new()), ("super::", parent.to_string())] {
            for (at, _) in code.match_indices(prefix) {
                let rest = &code[at + prefix.len()..];
                let path: String = rest.chars().take_while(|&c| is_ident(c)).collect();
                let path = path.trim_end_matches(':');
                // `crate::a::{b, c}`: each of b and c.
                let after = &rest[path.len()..];
                let mut paths = vec![path.to_string()];
                if let Some(group) = after.strip_prefix("::{").and_then(|g| g.split('}').next()) {
                    paths = group
                        .split(',')
                        .map(|item| item.trim().split([' ', ':']).next().unwrap_or(""))
                        .filter(|item| !item.is_empty())
                        .map(|item| format!("{path}::{item}"))
                        .collect();
                }
                for p in paths {
                    let full = if base.is_empty() {
                        p
                    } else {
                        format!("{base}::{p}")
                    };
                    if let Some(dep) = resolve(modules, &full) {
                        let related = dep.is_empty()
                            || dep == module
                            || module.starts_with(&format!("{dep}::"))
                            || dep.starts_with(&format!("{module}::"));
                        if !related {
                            deps.insert(dep.to_string());
                        }
                    }
                }
            }
        }
        graph.insert(module.clone(), deps);
    }
    graph
}

/// A cycle in `graph`, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            return Some(path[i..].to_vec());
        }
        if !done.insert(node.to_string()) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_file_imports_one_that_imports_it_back() {
    let modules = modules();
    assert!(modules.len() > 40, "found only {} modules", modules.len());
    let graph = imports(&modules);
    assert!(
        graph["components"].contains("invoke::http"),
        "the import scan missed components → invoke::http"
    );
    assert_eq!(cycle(&graph), None);
}

#[test]
fn top_level_modules_form_layers() {
    let graph = imports(&modules());
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, deps) in &graph {
        let from = module.split("::").next().unwrap_or_default().to_string();
        for dep in deps {
            let to = dep.split("::").next().unwrap_or_default().to_string();
            if to != from {
                top.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    assert_eq!(cycle(&top), None, "{top:#?}");
    // Data flows one way: the runtime and the capabilities know nothing
    // of the triggers, the components or the application above them.
    for low in ["runtime", "capabilities", "manifest", "runtime_config"] {
        for high in ["app", "components", "trigger", "deploy", "invoke", "admin"] {
            assert!(
                !top.get(low).is_some_and(|deps| deps.contains(high)),
                "{low} imports {high}"
            );
        }
    }
}
