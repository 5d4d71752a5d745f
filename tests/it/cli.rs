//! The binary's contract with operators: one clear line and the right exit code.

use std::process::{Command, Output};

use crate::helpers::{free_port, kyc_worker_binary};

fn kyc_worker(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(kyc_worker_binary());
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env("KYC_ENV", "ci-none");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run kyc-worker")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_lists_the_commands() {
    let out = kyc_worker(&["--help"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for command in ["sandbox", "didit"] {
        assert!(text.contains(command), "--help lacks {command}: {text}");
    }
    let out = kyc_worker(&["didit", "--help"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    for command in [
        "setup",
        "session",
        "decision",
        "full",
        "approve",
        "decline",
        "resubmit",
        "blocklist",
        "pdf",
        "webhook",
        "register",
        "verify-email",
        "balance",
        "top-up",
    ] {
        assert!(
            text.contains(command),
            "didit --help lacks {command}: {text}"
        );
    }
}

#[test]
fn an_invalid_setting_gives_one_line_naming_the_key_and_exit_code_2() {
    let cases = [
        ("KYC__DIDIT__BASE_URL", "not a url"),
        ("KYC__WORKER__CONCURRENCY", "0"),
        ("KYC__DIDIT__REQUEST_TIMEOUT", "soon"),
    ];
    for (key, value) in cases {
        let out = kyc_worker(&["didit", "balance"], &[(key, value)]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{key}={value}: {}",
            stderr(&out)
        );
        let err = stderr(&out);
        assert_eq!(err.trim().lines().count(), 1, "{key}: {err}");
        assert!(err.contains(key), "{key}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn a_missing_api_key_for_didit_itself_is_refused_before_any_call() {
    let out = kyc_worker(
        &["didit", "balance"],
        &[("KYC__DIDIT__BASE_URL", "https://verification.didit.me")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("KYC__DIDIT__API_KEY"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unreachable_base_url_gives_one_clear_line_and_exit_code_1() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = kyc_worker(&["didit", "balance"], &[("KYC__DIDIT__BASE_URL", &url)]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("balance") && err.contains("cannot connect"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// One-shot commands fail at once (exit 1) naming where Redis was expected; `kyc-worker run`
/// instead waits for Redis with readiness red (`redis_topologies`).
#[test]
fn an_unreachable_redis_is_named_by_host_and_port_and_never_by_its_password() {
    let port = free_port();
    let url = format!("redis://operator:hunter2-secret@127.0.0.1:{port}/0");
    for args in [
        vec!["queue", "stats"],
        vec!["session", "show", "some-request"],
        vec!["enqueue", "--vendor-data", "nobody"],
        vec!["erase", "--vendor-data", "nobody"],
    ] {
        let out = kyc_worker(
            &args,
            &[
                ("KYC__REDIS__URL", &url),
                ("KYC__HTTP__PORT", &free_port().to_string()),
            ],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!("cannot connect to Redis at 127.0.0.1:{port}")),
            "{args:?}: {err}"
        );
        assert!(!err.contains("hunter2"), "{args:?}: {err}");
    }
}

/// Every option of a command's `--help` has a description (on its line or the next).
fn undescribed_flags(help: &str) -> Vec<String> {
    let lines: Vec<&str> = help.lines().collect();
    let mut missing = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if !trimmed.starts_with('-') {
            continue;
        }
        let described_here = trimmed.contains("  ");
        let indent = line.len() - trimmed.len();
        let described_below = lines.get(i + 1).is_some_and(|next| {
            let text = next.trim_start();
            !text.is_empty() && !text.starts_with('-') && next.len() - text.len() > indent
        });
        if !described_here && !described_below {
            missing.push(trimmed.to_owned());
        }
    }
    missing
}

#[test]
fn enqueue_and_didit_setup_describe_every_flag() {
    assert_eq!(
        undescribed_flags(
            "Options:\n      --bare\n      --x <X>\n          said\n  -h, --help  Print help\n"
        ),
        vec!["--bare".to_owned()]
    );
    for args in [vec!["enqueue", "--help"], vec!["didit", "setup", "--help"]] {
        let out = kyc_worker(&args, &[]);
        assert!(out.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            undescribed_flags(&help),
            Vec::<String>::new(),
            "{args:?}:\n{help}"
        );
        assert!(
            help.lines()
                .filter(|l| l.trim_start().starts_with("--"))
                .count()
                >= 5
        );
    }
}
