//! The modules form one-way layers (src/lib.rs says which): a module may use the ones above
//! it, never one below, and no two modules may need each other. Rust compiles import cycles
//! happily, so nothing but this test notices when a change makes the domain reach for Redis
//! or two modules tangle; it reads the sources and fails naming the cycle or the import.
//!
//! A module is a file under `src/` (`jobs/intake` is `src/jobs/intake.rs`, `jobs` is
//! `src/jobs/mod.rs`). Module A depends on B when A names `crate::B…` (or `super::B…` from
//! the top level), or when A declares B as its submodule (a module contains its children).
//! Paths from a module to its own ancestors are containment, not dependence: they are
//! skipped, as are relative paths inside one module's tree.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The module graph of one crate: module → modules it depends on.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).expect("read src dir");
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `jobs/mod.rs` → `jobs`, `jobs/intake.rs` → `jobs/intake`; the crate root is "".
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let rel = rel.to_string_lossy().replace('\\', "/");
    match rel.as_str() {
        "lib" | "main" => String::new(),
        _ => rel.strip_suffix("/mod").unwrap_or(&rel).to_owned(),
    }
}

fn parent_of(module: &str) -> &str {
    module.rsplit_once('/').map_or("", |(p, _)| p)
}

/// The code without line comments (doc links name modules without depending on them).
fn code_of(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads a use tree or a path tail at `i` (just after `crate::`): every path it names.
fn paths_at(s: &[u8], i: &mut usize) -> Vec<Vec<String>> {
    while *i < s.len() && s[*i].is_ascii_whitespace() {
        *i += 1;
    }
    if *i < s.len() && s[*i] == b'{' {
        *i += 1;
        let mut all = Vec::new();
        loop {
            while *i < s.len() && (s[*i].is_ascii_whitespace() || s[*i] == b',') {
                *i += 1;
            }
            if *i >= s.len() || s[*i] == b'}' {
                *i += 1;
                return all;
            }
            all.extend(paths_at(s, i));
            // Skip what follows a leaf up to the next item (`as alias`).
            while *i < s.len() && s[*i] != b',' && s[*i] != b'}' {
                *i += 1;
            }
        }
    }
    let start = *i;
    while *i < s.len() && (s[*i].is_ascii_alphanumeric() || s[*i] == b'_') {
        *i += 1;
    }
    let ident = String::from_utf8_lossy(&s[start..*i]).into_owned();
    if ident.is_empty() {
        // `*` or something that is not a path.
        return vec![Vec::new()];
    }
    if s[*i..].starts_with(b"::") {
        *i += 2;
        return paths_at(s, i)
            .into_iter()
            .map(|mut tail| {
                tail.insert(0, ident.clone());
                tail
            })
            .collect();
    }
    vec![vec![ident]]
}

/// The longest prefix of `segments` that is a module.
fn resolve(modules: &BTreeSet<String>, segments: &[String]) -> Option<String> {
    let segments: Vec<&str> = segments
        .iter()
        .map(String::as_str)
        .filter(|s| *s != "self")
        .collect();
    (1..=segments.len())
        .rev()
        .map(|n| segments[..n].join("/"))
        .find(|m| modules.contains(m))
}

fn graph_of(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(src, f)).collect();
    let mut graph = Graph::new();
    for file in &files {
        let module = module_of(src, file);
        if module.is_empty() {
            continue;
        }
        let deps = graph.entry(module.clone()).or_default();
        // A module contains its children.
        for child in modules.iter().filter(|m| parent_of(m) == module) {
            deps.insert(child.clone());
        }
        let text = code_of(&std::fs::read_to_string(file).expect("read source"));
        let bytes = text.as_bytes();
        // From a top-level module, `super::` is the crate root.
        let roots: &[&str] = if parent_of(&module).is_empty() {
            &["crate::", "super::"]
        } else {
            &["crate::"]
        };
        for root in roots {
            for (at, _) in text.match_indices(root) {
                let before = bytes.get(at.wrapping_sub(1)).copied().unwrap_or(b' ');
                if before.is_ascii_alphanumeric() || before == b'_' || before == b':' {
                    continue; // `kyc_worker::…` or the tail of a longer path.
                }
                let mut i = at + root.len();
                for path in paths_at(bytes, &mut i) {
                    let Some(target) = resolve(&modules, &path) else {
                        continue;
                    };
                    let is_ancestor = module == target || module.starts_with(&format!("{target}/"));
                    if !is_ancestor {
                        deps.insert(target);
                    }
                }
            }
        }
    }
    graph
}

/// One cycle of the graph, as a path that ends where it starts, if there is any.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        graph: &Graph,
        node: &str,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(graph, next, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(graph, node, &mut Vec::new(), &mut done))
}

fn crate_src(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn assert_acyclic(relative: &str) {
    let graph = graph_of(&crate_src(relative));
    assert!(graph.len() > 3, "no modules found under {relative}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle in {relative}: {}", cycle.join(" → "));
    }
}

#[test]
fn the_fleet_modules_import_no_cycle() {
    assert_acyclic("src");
}

#[test]
fn the_sandbox_modules_import_no_cycle() {
    assert_acyclic("crates/didit-sandbox/src");
}

/// The layers src/lib.rs documents: each `# ` heading starts one, each "- [`module`]" line
/// (or "- `module`" for a module private to the crate) names a member. The layer whose heading says every layer shares it may be used by all.
fn documented_layers() -> (BTreeMap<String, usize>, BTreeSet<String>) {
    let lib = std::fs::read_to_string(crate_src("src/lib.rs")).expect("read lib.rs");
    let (mut layer_of, mut shared) = (BTreeMap::new(), BTreeSet::new());
    let (mut layer, mut is_shared) = (0, false);
    for line in lib.lines().filter_map(|l| l.strip_prefix("//!")) {
        let line = line.trim();
        if let Some(heading) = line.strip_prefix("# ") {
            layer += 1;
            is_shared = heading.contains("every layer shares");
        } else if let Some(rest) = line
            .strip_prefix("- [`")
            .or_else(|| line.strip_prefix("- `"))
        {
            let name = rest.split('`').next().unwrap_or_default().to_owned();
            if is_shared {
                shared.insert(name.clone());
            }
            layer_of.insert(name, layer);
        }
    }
    (layer_of, shared)
}

fn top(module: &str) -> &str {
    module.split('/').next().unwrap_or(module)
}

#[test]
fn every_import_goes_up_the_layers_documented_in_lib_rs() {
    let (layer_of, shared) = documented_layers();
    let graph = graph_of(&crate_src("src"));
    let mut wrong = Vec::new();
    for (module, deps) in &graph {
        let Some(&from) = layer_of.get(top(module)) else {
            wrong.push(format!("{module} is in no layer of src/lib.rs"));
            continue;
        };
        for dep in deps.iter().filter(|d| top(d) != top(module)) {
            let to = layer_of.get(top(dep)).copied().unwrap_or(usize::MAX);
            if to > from && !shared.contains(top(dep)) {
                wrong.push(format!("{module} imports {dep}, a layer below it"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_domain_and_the_rules_import_no_adapter_or_surface() {
    const OUTSIDE_THE_DOMAIN: [&str; 10] = [
        "queue",
        "store",
        "ratelimit",
        "jobs",
        "producer",
        "http",
        "console",
        "state",
        "cli",
        "startup",
    ];
    let graph = graph_of(&crate_src("src"));
    let mut checked = 0;
    for (module, deps) in &graph {
        if !matches!(top(module), "domain" | "rules") {
            continue;
        }
        checked += 1;
        for dep in deps {
            assert!(
                !OUTSIDE_THE_DOMAIN.contains(&top(dep)),
                "{module} imports {dep}: the domain must stay pure"
            );
        }
    }
    assert!(checked >= 4, "the domain and rules modules were not found");
}

#[test]
fn the_checker_sees_grouped_imports_and_cycles() {
    let text = "use crate::{domain::{A, B}, jobs::intake::{self, C}, queue as q};";
    let start = text.find("crate::").expect("path") + "crate::".len();
    let paths = paths_at(text.as_bytes(), &mut start.clone());
    let modules: BTreeSet<String> = ["domain", "jobs", "jobs/intake", "queue"]
        .map(String::from)
        .into();
    let targets: BTreeSet<String> = paths.iter().filter_map(|p| resolve(&modules, p)).collect();
    assert_eq!(
        targets,
        ["domain", "jobs/intake", "queue"].map(String::from).into()
    );
    let graph: Graph = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(["a", "b", "c", "a"].map(String::from).to_vec())
    );
}
