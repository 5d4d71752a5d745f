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
