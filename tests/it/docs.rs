//! The documentation keeps up with the code: every setting is in .env.example and README.

#[test]
fn every_setting_is_documented_in_env_example_and_readme() {
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example")).expect(".env.example");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    for setting in opendify::config::SETTINGS {
        assert!(example.contains(&format!("{}=", setting.name)), ".env.example lacks {}", setting.name);
        assert!(readme.contains(&format!("`{}`", setting.name)), "README.md lacks {}", setting.name);
    }
}

#[test]
fn env_example_is_a_valid_configuration() {
    let options = opendify::config::LoadOptions {
        env_file: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example").into()),
        overrides: Vec::new(),
        ignore_process_env: true,
    };
    let loaded = opendify::config::load(&options);
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
}

#[test]
fn every_example_key_in_env_example_is_known_as_a_placeholder() {
    // check-config warns about a key still set to an example: the list must cover them all.
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example")).expect(".env.example");
    let keys: Vec<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'))
        .filter(|w| w.starts_with("app-") || w.starts_with("sk-"))
        .collect();
    assert!(keys.len() >= 4, "{keys:?}");
    for key in keys {
        assert!(
            opendify::config::PLACEHOLDER_KEYS.contains(&key),
            ".env.example shows {key:?}, not in PLACEHOLDER_KEYS"
        );
    }
}
