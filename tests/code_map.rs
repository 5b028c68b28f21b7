//! docs/ARCHITECTURE.md must have a code-map heading for every workspace crate, so the map
//! cannot silently go stale.

#[test]
fn every_workspace_crate_is_in_the_code_map() {
    let root = env!("CARGO_MANIFEST_DIR");
    let manifest = std::fs::read_to_string(format!("{root}/Cargo.toml")).unwrap();
    let architecture = std::fs::read_to_string(format!("{root}/docs/ARCHITECTURE.md")).unwrap();
    let members_start = manifest.find("members = [").expect("workspace members");
    let members_end = manifest[members_start..].find(']').unwrap() + members_start;
    let members: Vec<&str> = manifest[members_start..members_end]
        .split('"')
        .skip(1)
        .step_by(2)
        .collect();
    assert!(members.len() >= 9, "found only {members:?}");
    for member in members {
        let crate_manifest =
            std::fs::read_to_string(format!("{root}/{member}/Cargo.toml")).unwrap();
        let name = crate_manifest
            .lines()
            .find_map(|l| l.strip_prefix("name = \""))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap_or_else(|| panic!("{member} has no package name"));
        let heading = format!("### `{member}`");
        assert!(
            architecture.contains(&heading),
            "docs/ARCHITECTURE.md has no heading {heading} (crate {name}) in its code map"
        );
    }
}
