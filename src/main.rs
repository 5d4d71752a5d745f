//! The `kyc-worker` binary. Everything lives in the library; see `kyc_worker::cli`.

fn main() -> std::process::ExitCode {
    kyc_worker::cli::main()
}
