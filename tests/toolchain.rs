//! One minimum Rust version, stated in Cargo.toml's `rust-version` and true: no locked dependency
//! needs a newer one, the Dockerfile builds with exactly it, and README names it. Only one toolchain
//! is installed here, so the check reads what each dependency declares (`cargo metadata`) instead of
//! building with an old compiler; clippy's `incompatible_msrv` lint covers Herald's own use of the
//! standard library.

use std::path::PathBuf;

use serde_json::Value;

/// The repository root (this crate lives in `tests/`).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// A Rust version as (major, minor, patch); a missing patch is 0.
fn version(text: &str) -> (u64, u64, u64) {
    let mut parts = text.split('.').map(|part| {
        part.parse::<u64>()
            .unwrap_or_else(|_| panic!("{text:?} is not a Rust version"))
    });
    let major = parts.next().unwrap();
    let minor = parts
        .next()
        .unwrap_or_else(|| panic!("{text:?} has no minor"));
    (major, minor, parts.next().unwrap_or(0))
}

/// `cargo metadata` of the workspace, with extra `args` (such as `--features`).
fn metadata(args: &[&str]) -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .args(args)
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
}

/// The workspace's `rust-version`: every member inherits the same one.
fn workspace_rust_version(metadata: &Value) -> String {
    let members: Vec<&Value> = metadata["workspace_members"]
        .as_array()
        .expect("workspace_members")
        .iter()
        .collect();
    let versions: std::collections::BTreeSet<String> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|package| members.contains(&&package["id"]))
        .map(|package| {
            package["rust_version"]
                .as_str()
                .unwrap_or_else(|| panic!("{} states no rust-version", package["name"]))
                .to_owned()
        })
        .collect();
    assert_eq!(
        versions.len(),
        1,
        "the workspace members disagree: {versions:?}"
    );
    versions.into_iter().next().unwrap()
}

/// The highest `rust-version` among the locked packages outside the workspace, and who needs it.
fn dependencies_need(metadata: &Value) -> ((u64, u64, u64), Vec<String>) {
    let members = metadata["workspace_members"].as_array().unwrap();
    let mut highest = (0, 0, 0);
    let mut who = Vec::new();
    for package in metadata["packages"].as_array().unwrap() {
        if members.contains(&package["id"]) {
            continue;
        }
        let Some(needed) = package["rust_version"].as_str() else {
            continue;
        };
        let needed = version(needed);
        let name = format!(
            "{} {}",
            package["name"].as_str().unwrap(),
            package["version"]
        );
        if needed > highest {
            highest = needed;
            who.clear();
        }
        if needed == highest {
            who.push(name);
        }
    }
    (highest, who)
}

#[test]
fn no_locked_dependency_needs_a_newer_rust_than_the_workspace_states() {
    let metadata = metadata(&[]);
    let stated = workspace_rust_version(&metadata);
    let (needed, who) = dependencies_need(&metadata);
    assert!(
        needed > (1, 0, 0),
        "no dependency states a rust-version: the check read nothing"
    );
    assert!(
        version(&stated) >= needed,
        "Cargo.toml says rust-version = {stated:?}, but {who:?} need {}.{}.{}: raise it (and the \
         Dockerfile's image and README with it)",
        needed.0,
        needed.1,
        needed.2
    );
}

#[test]
fn the_dockerfile_builds_with_exactly_the_stated_rust() {
    let stated = workspace_rust_version(&metadata(&[]));
    let (major, minor, _) = version(&stated);
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let images: Vec<&str> = dockerfile
        .lines()
        .filter_map(|line| line.trim().strip_prefix("FROM rust:"))
        .map(|rest| rest.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(images.len(), 1, "one Rust builder image: {images:?}");
    // rust:1.89-bookworm or rust:1.89.0-bookworm: the version before the variant. A floating tag
    // (rust:1, rust:latest) builds with whatever is newest, which proves nothing about the minimum.
    let tag = images[0].split('-').next().unwrap();
    let wanted = format!("{major}.{minor}");
    assert!(
        tag == wanted || tag.starts_with(&format!("{wanted}.")),
        "the Dockerfile builds with rust:{tag}, but Cargo.toml states {stated}: use rust:{wanted}-…"
    );
}

#[test]
fn readme_names_the_stated_rust_and_the_one_malachite_needs() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let (major, minor, _) = version(&workspace_rust_version(&metadata(&[])));
    let stated = format!("Rust {major}.{minor} or newer");
    assert!(readme.contains(&stated), "README should say {stated:?}");

    // The optional malachite backend may need more than the default build.
    let with_malachite = metadata(&["--features", "herald-worker/malachite"]);
    let (needed, who) = dependencies_need(&with_malachite);
    let malachite = format!("Rust {}.{} or newer", needed.0, needed.1);
    assert!(
        readme.contains(&format!("It needs {malachite}")),
        "README's malachite section should say \"It needs {malachite}\" ({who:?})"
    );
}
