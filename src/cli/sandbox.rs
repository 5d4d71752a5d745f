//! `kyc-worker sandbox`: placeholder until the sandbox lands.

use clap::Args;

use super::CliError;

#[derive(Debug, Args)]
pub struct SandboxArgs {}

pub async fn run(_args: SandboxArgs) -> Result<(), CliError> {
    Err(CliError::Usage("the sandbox is not built yet".into()))
}
