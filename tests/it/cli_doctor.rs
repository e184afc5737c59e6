//! The doctor's command line: how it parses (flags before or after the check name), what
//! `--help` promises (the exit codes), and the shell completions committed in
//! `completions/`, which must match what the binary generates. When the CLI changes,
//! regenerate them with `UPDATE_COMPLETIONS=1 cargo test --test it cli_doctor`.

use std::path::Path;

use clap::Parser;
use opendify::cli::{CheckId, Cli, Command, DoctorCommand, NetworkErrors};

fn parse(args: &[&str]) -> Cli {
    Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?} does not parse: {e}"))
}

fn doctor_args(cli: &Cli) -> &opendify::cli::DoctorArgs {
    match &cli.command {
        Command::Doctor(args) => args,
        other => panic!("not doctor: {other:?}"),
    }
}

#[test]
fn flags_go_before_or_after_the_check_name() {
    for args in [
        &["opendify", "doctor", "--json", "--strict", "ping-dify", "--count", "3"][..],
        &["opendify", "doctor", "ping-dify", "--count", "3", "--json", "--strict"],
    ] {
        let cli = parse(args);
        let doctor = doctor_args(&cli);
        assert!(doctor.json && doctor.strict, "{args:?}");
        match &doctor.check {
            Some(DoctorCommand::PingDify(ping)) => assert_eq!(ping.count, 3),
            other => panic!("{other:?}"),
        }
    }
    let cli = parse(&["opendify", "doctor", "--only", "test-key,check-config", "--network-errors", "warn"]);
    let doctor = doctor_args(&cli);
    assert_eq!(doctor.only, [CheckId::TestKey, CheckId::CheckConfig]);
    assert_eq!(doctor.network_errors, NetworkErrors::Warn);
    assert!(doctor.check.is_none());
}

#[test]
fn several_checks_by_name_each_with_its_own_options() {
    let cli = Cli::try_parse_chained([
        "opendify",
        "doctor",
        "check-config",
        "ping-dify",
        "--count",
        "3",
        "test-stream",
        "--message",
        "test-key",
        "--json",
    ])
    .expect("parses");
    let doctor = doctor_args(&cli);
    assert!(doctor.json, "a global flag after a later check still counts");
    let named: Vec<&DoctorCommand> = doctor.named_checks().collect();
    assert!(matches!(named[0], DoctorCommand::CheckConfig), "{named:?}");
    assert!(matches!(named[1], DoctorCommand::PingDify(p) if p.count == 3), "{named:?}");
    assert!(
        matches!(named[2], DoctorCommand::TestStream(t) if t.message == "test-key"),
        "a value is not a check: {named:?}"
    );
    assert_eq!(named.len(), 3);
    let options = opendify::doctor::Options::from_args(doctor).expect("valid");
    assert_eq!(options.checks, [CheckId::CheckConfig, CheckId::PingDify, CheckId::TestStream]);
    assert_eq!(options.ping.count, 3);
    // One check parses exactly as before.
    let one = Cli::try_parse_chained(["opendify", "doctor", "test-key", "chat", "--live"]).expect("parses");
    assert!(matches!(doctor_args(&one).check, Some(DoctorCommand::TestKey(ref k)) if k.live && k.models == ["chat"]));
    assert!(Cli::try_parse_chained(["opendify", "doctor", "check-config", "ping-dify", "--count", "x"]).is_err());
}

#[test]
fn check_port_flags_override_the_settings_like_serve_flags_do() {
    let cli = parse(&["opendify", "doctor", "check-port", "--port", "6001", "--host", "0.0.0.0"]);
    let options = cli.load_options();
    assert!(options.overrides.contains(&("SERVER_PORT", "6001".to_string())), "{:?}", options.overrides);
    assert!(options.overrides.contains(&("SERVER_HOST", "0.0.0.0".to_string())), "{:?}", options.overrides);
    let plain = parse(&["opendify", "doctor"]);
    assert!(plain.load_options().overrides.is_empty());
}

#[test]
fn dns_servers_and_via_urls_are_validated_while_parsing() {
    let cli = parse(&["opendify", "doctor", "ping-dify", "--dns", "1.1.1.1"]);
    match &doctor_args(&cli).check {
        Some(DoctorCommand::PingDify(ping)) => {
            assert_eq!(ping.dns.map(|d| d.to_string()).as_deref(), Some("1.1.1.1:53"))
        }
        other => panic!("{other:?}"),
    }
    assert!(Cli::try_parse_from(["opendify", "doctor", "ping-dify", "--dns", "[::1]:5353"]).is_ok());
    assert!(Cli::try_parse_from(["opendify", "doctor", "ping-dify", "--dns", "dns.google"]).is_err());
    assert!(Cli::try_parse_from(["opendify", "doctor", "test-stream", "--via", "localhost:5000"]).is_err());
    assert!(Cli::try_parse_from(["opendify", "doctor", "--timeout", "0"]).is_err());
}

#[test]
fn help_documents_the_checks_and_exit_codes() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_opendify"))
        .args(["doctor", "--help"])
        .output()
        .expect("run opendify");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "Exit codes:",
        "0  no check failed",
        "1  at least one check failed",
        "2  the doctor could not run",
        "check-config",
        "inspect-mappings",
        "--network-errors",
        "report",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

/// The completion file committed for each shell.
const COMPLETIONS: [(&str, &str); 5] = [
    ("bash", "opendify.bash"),
    ("zsh", "_opendify"),
    ("fish", "opendify.fish"),
    ("powershell", "_opendify.ps1"),
    ("elvish", "opendify.elv"),
];

#[test]
fn committed_completions_match_the_cli() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("completions");
    let update = std::env::var_os("UPDATE_COMPLETIONS").is_some();
    let mut stale = Vec::new();
    for (shell, file) in COMPLETIONS {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_opendify"))
            .args(["completions", shell])
            .output()
            .expect("run opendify");
        assert!(output.status.success(), "opendify completions {shell} failed");
        let path = dir.join(file);
        if update {
            std::fs::create_dir_all(&dir).expect("mkdir completions");
            std::fs::write(&path, &output.stdout).expect("write completions");
            continue;
        }
        if std::fs::read(&path).ok().as_deref() != Some(&output.stdout[..]) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale shell completions (the CLI changed): {}\nregenerate them with `UPDATE_COMPLETIONS=1 cargo test --test it cli_doctor`",
        stale.join(", ")
    );
}
