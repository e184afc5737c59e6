//! The module graph as the README's architecture section states it: every module of `src/`
//! uses only the modules its row names, and no module uses one that uses it back (also
//! between files of one module). Read from the sources' `crate::` and `super::` paths.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every file module of `src/` (`bridge::events`) and what it uses (file modules too).
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let name_of = |path: &Path| -> String {
        let relative = path.strip_prefix(&root).expect("under src").with_extension("");
        let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
            parts.pop();
        }
        parts.join("::")
    };
    let names: BTreeSet<String> = files.iter().map(|f| name_of(f)).collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let name = name_of(file);
        let text = std::fs::read_to_string(file).expect("read");
        // Tests may reach anywhere; the product may not.
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        let mut uses = BTreeSet::new();
        for (at, _) in text.match_indices("crate::").chain(text.match_indices("super::")) {
            let before = text[..at].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let (base, rest) = text[at..].split_once("::").expect("a path");
            let path: Vec<&str> = rest
                .split("::")
                .map(|p| p.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or(""))
                .take_while(|p| !p.is_empty() && p.starts_with(|c: char| c.is_ascii_lowercase()))
                .collect();
            let mut full: Vec<String> = if base == "crate" {
                Vec::new()
            } else {
                let mut parent: Vec<String> = name.split("::").map(str::to_string).collect();
                parent.pop();
                parent
            };
            full.extend(path.iter().map(|p| p.to_string()));
            if let Some(target) = (1..=full.len()).rev().map(|k| full[..k].join("::")).find(|c| names.contains(c))
                && target != name
                && !name.starts_with(&format!("{target}::"))
            {
                uses.insert(target);
            }
        }
        graph.insert(name, uses);
    }
    graph
}

fn top(name: &str) -> &str {
    name.split("::").next().unwrap_or(name)
}

/// `module → modules it may use`, from the README's architecture table.
fn declared() -> BTreeMap<String, BTreeSet<String>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let section = readme.split("### Architecture").nth(1).expect("README has an Architecture section");
    let mut table = BTreeMap::new();
    for line in section.lines().skip_while(|l| !l.starts_with("| module")).skip(2) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let module = cells[1].trim_matches('`').to_string();
        let may_use =
            cells[3].split(',').map(|m| m.trim().trim_matches('`').to_string()).filter(|m| !m.is_empty() && m != "—");
        table.insert(module, may_use.collect());
    }
    table
}

#[test]
fn every_module_uses_only_what_the_readme_allows() {
    let graph = module_graph();
    let declared = declared();
    for (module, uses) in &graph {
        let own = top(module);
        if own.is_empty() {
            continue; // lib.rs declares the modules.
        }
        let allowed = declared.get(own).unwrap_or_else(|| panic!("README's architecture table has no row for `{own}`"));
        for used in uses.iter().map(|u| top(u)).filter(|u| *u != own) {
            assert!(allowed.contains(used), "`{module}` uses `{used}`, which README's row for `{own}` does not allow");
        }
    }
    let tops: BTreeSet<&str> = graph.keys().map(|m| top(m)).filter(|m| !m.is_empty()).collect();
    for module in declared.keys() {
        assert!(tops.contains(module.as_str()), "README names `{module}`, which src/ does not have");
    }
}

#[test]
fn no_module_uses_a_module_that_uses_it_back() {
    let graph = module_graph();
    // Depth-first search for a cycle, reporting it.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(at) = path.iter().position(|n| *n == node) {
            panic!("module cycle: {} -> {node}", path[at..].join(" -> "));
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(node);
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done);
    }
}
